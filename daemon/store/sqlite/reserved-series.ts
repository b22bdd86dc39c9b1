/**
 * A number series (fencing tokens, event seqs) drawn in memory by SQLite's one writer. The
 * database holds how far the series is reserved, raised a block at a time inside a transaction
 * that draws past it, so most commits write no counter row and a restart goes on beyond every
 * number handed out (skipping the rest of the block: numbers grow and never repeat, with gaps).
 */
import type { SqlConnection } from '../sql-tx';
import { SQLITE_SQL } from './sql';

export class ReservedSeries {
  static readonly BLOCK = 10_000;
  /** Last number used by a committed transaction; undefined until read from the database. */
  private last?: number;
  private reserved = 0;

  constructor(readonly name: string) {}

  /** The last number used, reading the reservation at first use. */
  async base(conn: SqlConnection): Promise<number> {
    if (this.last === undefined) {
      const [row] = await conn.query(SQLITE_SQL.readCounter, [this.name]);
      this.reserved = Number(row?.value ?? 0);
      this.last = this.reserved;
    }
    return this.last;
  }

  /**
   * Within the transaction that used `used` numbers after base(): raise the reservation if they
   * pass it. Returns what to call once that transaction has committed.
   */
  async reserve(conn: SqlConnection, used: number): Promise<() => void> {
    if (used === 0 || this.last === undefined) return () => undefined;
    const last = this.last + used;
    let reserved = this.reserved;
    if (last > reserved) {
      reserved = last + ReservedSeries.BLOCK;
      await conn.query(SQLITE_SQL.writeCounter, [this.name, reserved]);
    }
    return () => {
      this.last = last;
      this.reserved = reserved;
    };
  }
}
