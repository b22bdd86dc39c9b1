/**
 * A minimal Redis client for the peers scenario (RESP2 over one TCP connection), so the bench
 * needs no Redis package: commands are written as they are issued (all those of one tick in one
 * write) and their replies, which Redis sends in order, settle them first in, first out.
 */
import { connect as netConnect, type Socket } from 'node:net';

/** An error reply (`-ERR ...`). */
export class RedisError extends Error {
  override name = 'RedisError';
}

/** A decoded reply: simple string, bulk string, integer, nil (null), array; error replies are RedisError. */
export type RedisReply = string | number | null | RedisError | RedisReply[];

const CRLF = 0x0d;

/** Decodes RESP2 replies from a byte stream that may arrive cut anywhere. */
export class RespParser {
  private buf: Buffer = Buffer.alloc(0);
  private pos = 0;

  /** Add bytes; returns every reply now complete, in order. */
  push(chunk: Buffer): RedisReply[] {
    this.buf = this.pos < this.buf.length ? Buffer.concat([this.buf.subarray(this.pos), chunk]) : chunk;
    this.pos = 0;
    const out: RedisReply[] = [];
    for (;;) {
      const start = this.pos;
      const reply = this.parse();
      if (reply === undefined) {
        this.pos = start;
        return out;
      }
      out.push(reply);
    }
  }

  /** The line from `pos` up to CRLF (moving past it), or undefined if it has not all arrived. */
  private line(): string | undefined {
    const end = this.buf.indexOf(CRLF, this.pos);
    if (end < 0 || end + 1 >= this.buf.length) return undefined;
    const s = this.buf.toString('utf8', this.pos, end);
    this.pos = end + 2;
    return s;
  }

  /** One reply from `pos`, or undefined if it is incomplete (`pos` is then left anywhere). */
  private parse(): RedisReply | undefined {
    if (this.pos >= this.buf.length) return undefined;
    const type = String.fromCharCode(this.buf[this.pos]!);
    this.pos += 1;
    const head = this.line();
    if (head === undefined) return undefined;
    switch (type) {
      case '+':
        return head;
      case '-':
        return new RedisError(head);
      case ':':
        return Number(head);
      case '$': {
        const len = Number(head);
        if (len < 0) return null;
        if (this.pos + len + 2 > this.buf.length) return undefined;
        const s = this.buf.toString('utf8', this.pos, this.pos + len);
        this.pos += len + 2;
        return s;
      }
      case '*': {
        const n = Number(head);
        if (n < 0) return null;
        const items: RedisReply[] = [];
        for (let i = 0; i < n; i++) {
          const item = this.parse();
          if (item === undefined) return undefined;
          items.push(item);
        }
        return items;
      }
      default:
        throw new Error(`unexpected RESP type byte ${JSON.stringify(type)}`);
    }
  }
}

/** A command as RESP2 sends it: an array of bulk strings. */
export function encodeCommand(args: (string | number)[]): string {
  let out = `*${args.length}\r\n`;
  for (const a of args) {
    const s = String(a);
    out += `$${Buffer.byteLength(s)}\r\n${s}\r\n`;
  }
  return out;
}

export class RedisClient {
  private readonly parser = new RespParser();
  private readonly pending: { resolve(r: RedisReply): void; reject(e: Error): void }[] = [];
  private corked = false;
  private closed: Error | undefined;

  private constructor(private readonly socket: Socket) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      let replies: RedisReply[];
      try {
        replies = this.parser.push(chunk);
      } catch (err) {
        this.fail(err as Error);
        socket.destroy();
        return;
      }
      for (const r of replies) {
        const p = this.pending.shift();
        if (!p) continue;
        if (r instanceof RedisError) p.reject(r);
        else p.resolve(r);
      }
    });
    socket.on('error', (err) => this.fail(err));
    socket.on('close', () => this.fail(new Error('connection to redis-server closed')));
  }

  static connect(port: number, host = '127.0.0.1'): Promise<RedisClient> {
    return new Promise((resolve, reject) => {
      const socket = netConnect(port, host);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new RedisClient(socket));
      });
      socket.once('error', reject);
    });
  }

  /** Send one command; resolves with its reply, rejects with a RedisError for an error reply. */
  command(...args: (string | number)[]): Promise<RedisReply> {
    if (this.closed) return Promise.reject(this.closed);
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      if (!this.corked) {
        this.corked = true;
        this.socket.cork();
        process.nextTick(() => {
          this.corked = false;
          this.socket.uncork();
        });
      }
      this.socket.write(encodeCommand(args));
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    const ended = new Promise<void>((r) => this.socket.once('close', () => r()));
    this.socket.end();
    await ended;
  }

  private fail(err: Error): void {
    this.closed ??= err;
    for (const p of this.pending.splice(0)) p.reject(err);
  }
}
