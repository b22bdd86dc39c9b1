/**
 * The set_lock example from django-lockmgr's documentation, through lockmgr.
 * Run a daemon first (`npm start`), then `npm run example`.
 */
import { LockClient } from '../client/index';

async function main(): Promise<void> {
  const client = await LockClient.connect({ servers: process.env.LOCKMGR_NATS_URL ?? 'nats://127.0.0.1:4222' });
  try {
    await client.unlock('hello');
    await client.unlock('world');

    // Let's set two locks, hello and world.
    const res = await client.setLock('hello', 'world');
    console.log("> res = await setLock('hello', 'world')");
    console.log('> res.locks');
    console.log(res.locks);
    console.log('> res.counts');
    console.log(res.counts);

    // Again: the same locks are renewed instead of created.
    const x = await client.setLock('hello', 'world');
    console.log("> x = await setLock('hello', 'world')");
    console.log('> x.locks');
    console.log(x.locks);
    console.log('> x.counts');
    console.log(x.counts);
    console.log('> x.statuses[0]');
    console.log(x.statuses[0]);
    console.log('> x.statuses[1]');
    console.log(x.statuses[1]);

    await client.unlock('hello');
    await client.unlock('world');
  } finally {
    await client.close();
  }
}

main().catch((err) => {
  console.error(`example failed: ${err.message}`);
  process.exit(1);
});
