/**
 * AnswerMemory (daemon/answers.ts): the answers given to requests with an id, kept for a while
 * and bounded, for copies of a request that arrive after it was answered.
 */
import { AnswerMemory, settle } from '../../daemon/answers';

describe('AnswerMemory', () => {
  it('gives back an answer for keepMs, then forgets it', () => {
    const memory = new AnswerMemory(1000, 10);
    memory.set('a', { value: 1 }, 0);
    expect(memory.get('a', 999)).toEqual({ value: 1 });
    expect(memory.get('a', 1000)).toBeUndefined();
    expect(memory.get('b', 0)).toBeUndefined();
  });

  it('keeps at most `max`, dropping the oldest; stale ones go first', () => {
    const memory = new AnswerMemory(1000, 3);
    for (const [i, id] of ['a', 'b', 'c', 'd'].entries()) memory.set(id, { value: id }, i);
    expect(memory.size).toBe(3);
    expect(memory.get('a', 4)).toBeUndefined();
    expect(memory.get('d', 4)).toEqual({ value: 'd' });
    // Past their time, b, c and d are pruned by the next answer.
    memory.set('e', { value: 'e' }, 2000);
    expect(memory.size).toBe(1);
  });

  it('settle returns the value or throws the error', () => {
    expect(settle({ value: 7 })).toBe(7);
    const err = new Error('locked');
    expect(() => settle({ error: err })).toThrow(err);
  });
});
