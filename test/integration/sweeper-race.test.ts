/**
 * The sweeper of one daemon and a renewal by another, on one PostgreSQL database, meeting on the
 * same row: the renewal commits while the sweep waits for the row. The sweep must then leave the
 * renewed lock alone and record no `expired` event. Two batchers on two stores (two connection
 * pools) stand for the two daemons.
 */
import { Batcher } from '../../daemon/batcher';
import { ops, renewLock } from '../../daemon/lock-ops';
import { PostgresStore } from '../../daemon/store/postgres/postgres-store';
import type { Requester } from '../../daemon/store/store';
import { createTestDatabase, type TestDatabase } from '../helpers/databases';
import { sleep, sqlQuery } from '../helpers/events';

describe('sweeper and renewal racing for one row on postgres', () => {
  let tdb: TestDatabase;
  let a: PostgresStore;
  let b: PostgresStore;
  beforeAll(async () => {
    tdb = await createTestDatabase('postgres');
    a = new PostgresStore({ url: tdb.url, daemonId: 'A' });
    b = new PostgresStore({ url: tdb.url, daemonId: 'B' });
    await a.migrate();
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
    await tdb?.drop();
  });

  it('a lock renewed while a sweep waits for its row is not swept, and no expired event is recorded', async () => {
    const who: Requester = { lockedBy: 'racer', process: 1, client: null };
    const daemonA = new Batcher(a);
    const daemonB = new Batcher(b);
    const granted = await daemonA.run(
      ops.get(
        {
          name: 'race.1',
          expiresMs: 400,
          lockedBy: 'racer',
          process: 1,
          waitMs: 0,
          progress: false,
          session: null,
          requestId: null,
          attempt: 1,
        },
        who,
      ),
    );
    expect('granted' in granted).toBe(true);
    const until = (granted as { granted: { locked_until: number } }).granted.locked_until;

    // Daemon A renews just before the expiry and keeps its transaction open past it.
    await sleep(Math.max(0, until - Date.now() - 150));
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let renewedUntil = 0;
    const renewing = daemonA.run({
      run: async (tx) => {
        const row = await renewLock(
          tx,
          {
            name: 'race.1',
            expiresMs: 60_000,
            addTime: false,
            create: false,
            token: null,
            lockedBy: 'racer',
            process: 1,
            requestId: null,
            attempt: 1,
          },
          who,
        );
        renewedUntil = row.locked_until!;
        await gate;
      },
    });
    // Daemon B sweeps after the old expiry: by its clock the lock has expired, but the row is
    // locked by A's renewal, so the sweep waits for it.
    await sleep(Math.max(0, until - Date.now() + 100));
    const sweeping = daemonB.run(ops.deleteExpired(100, who, 'sweeper'));
    await sleep(200);
    release();
    await renewing;
    const swept = await sweeping;

    expect(swept).toEqual([]);
    const [row] = await sqlQuery(tdb, 'SELECT locked_until FROM lockmgr_locks WHERE name = ?', ['race.1']);
    expect(Number(row?.locked_until)).toBe(renewedUntil);
    const events = await sqlQuery(tdb, 'SELECT type FROM lockmgr_outbox ORDER BY seq');
    expect(events.map((e) => e.type)).toEqual(['created', 'renewed']);
  });
});
