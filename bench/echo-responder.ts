/**
 * The NATS floor's responder: a plain subscription in a queue group that answers every request on
 * `<prefix>.<kind>` with a fixed payload as large as lockmgr's reply of that kind. No decoding,
 * no work: what is left is the cost of NATS request/reply itself.
 *
 *   node dist/bench/echo-responder.js <nats-url> <prefix> '{"set":311,"unlock":38}'
 */
import { connect } from 'nats';

async function main(): Promise<void> {
  const [url, prefix, sizesJson] = process.argv.slice(2);
  if (!url || !prefix) throw new Error('usage: echo-responder <nats-url> <prefix> [reply sizes JSON]');
  const sizes = JSON.parse(sizesJson ?? '{}') as Record<string, number>;
  const replies = new Map<string, Uint8Array>();
  for (const [kind, size] of Object.entries(sizes)) replies.set(`${prefix}.${kind}`, new Uint8Array(size).fill(0x78));
  const empty = new Uint8Array(0);
  const nc = await connect({ servers: url, name: 'lockmgr-bench-echo' });
  nc.subscribe(`${prefix}.>`, {
    queue: 'echo',
    callback: (_err, msg) => {
      msg.respond(replies.get(msg.subject) ?? empty);
    },
  });
  await nc.flush();
  const stop = () => void nc.drain().finally(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  process.stderr.write(`echo responder: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
