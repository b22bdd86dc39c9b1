/**
 * Numbered schema migrations, applied by umzug through Sequelize's public API and recorded in the
 * `SequelizeMeta` table. Each backend lists its own (store/<backend>/migrations.ts) under the same
 * names, so a name means the same schema step on both. A released migration is never edited:
 * schema changes are new entries at the end.
 */
import { QueryTypes, type Sequelize } from 'sequelize';
import { SequelizeStorage, Umzug } from 'umzug';
import type { MigrateOptions } from './store';

export interface Migration {
  name: string;
  up: readonly string[];
  down: readonly string[];
  /** Run the statements in one transaction, so that an interrupted migration leaves nothing behind. */
  atomic?: boolean;
}

async function runStatements(sequelize: Sequelize, statements: readonly string[], atomic: boolean): Promise<void> {
  if (!atomic) {
    for (const sql of statements) await sequelize.query(sql, { type: QueryTypes.RAW });
    return;
  }
  if (statements.length === 0) return;
  await sequelize.transaction(async (transaction) => {
    for (const sql of statements) await sequelize.query(sql, { type: QueryTypes.RAW, transaction });
  });
}

function umzugFor(sequelize: Sequelize, migrations: readonly Migration[]): Umzug<Sequelize> {
  return new Umzug<Sequelize>({
    migrations: migrations.map((m) => ({
      name: m.name,
      up: () => runStatements(sequelize, m.up, m.atomic ?? false),
      down: () => runStatements(sequelize, m.down, m.atomic ?? false),
    })),
    context: sequelize,
    storage: new SequelizeStorage({ sequelize }),
    logger: undefined,
  });
}

/** Apply the pending migrations of `migrations`; returns the names applied. */
export async function applyMigrations(
  sequelize: Sequelize,
  migrations: readonly Migration[],
  options: MigrateOptions = {},
): Promise<string[]> {
  const applied = await umzugFor(sequelize, migrations).up(options.upTo === undefined ? {} : { to: options.upTo });
  for (const m of applied) options.onApplied?.(m.name);
  return applied.map((m) => m.name);
}
