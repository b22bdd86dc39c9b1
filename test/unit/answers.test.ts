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

  it('an id answered again counts from its newest answer, and is dropped as that one ages', () => {
    const memory = new AnswerMemory(1000, 2);
    memory.set('a', { value: 1 }, 0);
    memory.set('b', { value: 2 }, 1);
    memory.set('a', { value: 3 }, 2); // a is now the newest: b goes first
    memory.set('c', { value: 4 }, 3);
    expect(memory.size).toBe(2);
    expect(memory.get('b', 3)).toBeUndefined();
    expect(memory.get('a', 3)).toEqual({ value: 3 });
    expect(memory.get('a', 1001)).toEqual({ value: 3 }); // kept from its newest answer
    memory.set('d', { value: 5 }, 1002); // a's first answer is long gone; its second is stale now
    expect(memory.get('a', 1002)).toBeUndefined();
    expect(memory.size).toBe(2);
  });

  it('stays bounded and answers the newest through many answers', () => {
    const memory = new AnswerMemory(60_000, 100);
    for (let i = 0; i < 10_000; i++) memory.set(`id${i % 150}`, { value: i }, i);
    expect(memory.size).toBe(100);
    // The newest 100 answers are those from 9,900 on: ids 0 to 99.
    expect(memory.get('id0', 10_000)).toEqual({ value: 9_900 });
    expect(memory.get('id99', 10_000)).toEqual({ value: 9_999 });
    expect(memory.get('id100', 10_000)).toBeUndefined(); // last answered at 9,850
    expect(memory.get('id149', 10_000)).toBeUndefined(); // last answered at 9,899
  });

  it('settle returns the value or throws the error', () => {
    expect(settle({ value: 7 })).toBe(7);
    const err = new Error('locked');
    expect(() => settle({ error: err })).toThrow(err);
  });
});
