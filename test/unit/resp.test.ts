/**
 * The bench's minimal Redis client: RESP2 replies decoded from a stream cut anywhere, and
 * commands encoded as arrays of bulk strings.
 */
import { encodeCommand, RedisError, RespParser, type RedisReply } from '../../bench/lib/redis';

const REPLIES =
  '+OK\r\n-ERR wrong number of arguments\r\n:42\r\n:-1\r\n$5\r\nhello\r\n$0\r\n\r\n$-1\r\n$4\r\na\r\nb\r\n*2\r\n:1\r\n$2\r\nxy\r\n*-1\r\n';

function expectReplies(replies: RedisReply[]): void {
  expect(replies).toHaveLength(10);
  expect(replies[0]).toBe('OK');
  expect(replies[1]).toBeInstanceOf(RedisError);
  expect((replies[1] as RedisError).message).toBe('ERR wrong number of arguments');
  expect(replies.slice(2)).toEqual([42, -1, 'hello', '', null, 'a\r\nb', [1, 'xy'], null]);
}

describe('RespParser', () => {
  it('decodes simple strings, errors, integers, bulk strings, nil and arrays', () => {
    expectReplies(new RespParser().push(Buffer.from(REPLIES)));
  });

  it('gives the same replies when the stream arrives one byte at a time', () => {
    const p = new RespParser();
    const bytes = Buffer.from(REPLIES);
    const replies: RedisReply[] = [];
    for (let i = 0; i < bytes.length; i++) replies.push(...p.push(bytes.subarray(i, i + 1)));
    expectReplies(replies);
  });

  it('holds an incomplete reply until the rest arrives', () => {
    const p = new RespParser();
    expect(p.push(Buffer.from('$5\r\nhel'))).toEqual([]);
    expect(p.push(Buffer.from('lo\r'))).toEqual([]);
    expect(p.push(Buffer.from('\n:7'))).toEqual(['hello']);
    expect(p.push(Buffer.from('\r\n'))).toEqual([7]);
  });

  it('counts bulk string lengths in bytes', () => {
    expect(new RespParser().push(Buffer.from('$4\r\nçé\r\n'))).toEqual(['çé']);
  });

  it('refuses a type byte RESP2 does not have', () => {
    expect(() => new RespParser().push(Buffer.from('?x\r\n'))).toThrow(/unexpected RESP type/);
  });
});

describe('encodeCommand', () => {
  it('sends every argument as a bulk string, its length in bytes', () => {
    expect(encodeCommand(['SET', 'job.w001', 'é', 'PX', 30000])).toBe(
      '*5\r\n$3\r\nSET\r\n$8\r\njob.w001\r\n$2\r\né\r\n$2\r\nPX\r\n$5\r\n30000\r\n',
    );
  });
});
