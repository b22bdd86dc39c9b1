/**
 * The answers a daemon gave to requests with an id, kept for a while so that a copy of a request
 * (a client sends one when no answer came in time) arriving after the answer gets the same answer
 * and is not done again: a grant after a "locked", or an unlock after a "nothing to unlock", would
 * be a change the client was told did not happen. An answer whose outcome the store recorded is
 * kept as IN_STORE only: the copy looks it up there. Bounded: past `max`, the oldest go first.
 */
export type Answer = { value: unknown } | { error: unknown };

/** The answer's outcome is recorded in the store. */
export const IN_STORE = Object.freeze({ inStore: true as const });
export type KeptAnswer = Answer | typeof IN_STORE;

interface Kept {
  id: string;
  answer: KeptAnswer;
  until: number;
}

export class AnswerMemory {
  private readonly kept = new Map<string, Kept>();
  /**
   * Every answer kept, in the order given (each kept for the same time: the stale ones are in
   * front), from `head` on; an entry replaced by a later answer of its id stays here until it
   * reaches the front. Not the Map's own order: a Map iterated from its start steps over every
   * entry deleted since it last grew, which cost 4–11% of the cycles at 64 in flight (20,000 answers).
   */
  private order: Kept[] = [];
  private head = 0;

  constructor(
    private readonly keepMs: number,
    private readonly max: number,
  ) {}

  get(id: string, now: number): KeptAnswer | undefined {
    const k = this.kept.get(id);
    if (k === undefined || k.until <= now) return undefined;
    return k.answer;
  }

  set(id: string, answer: KeptAnswer, now: number): void {
    const entry = { id, answer, until: now + this.keepMs };
    this.kept.set(id, entry);
    this.order.push(entry);
    while (this.head < this.order.length) {
      const oldest = this.order[this.head]!;
      if (this.kept.get(oldest.id) === oldest) {
        if (oldest.until > now && this.kept.size <= this.max) break;
        this.kept.delete(oldest.id);
      }
      this.head += 1;
    }
    if (this.head > 1024 && this.head * 2 > this.order.length) {
      this.order = this.order.slice(this.head);
      this.head = 0;
    }
  }

  get size(): number {
    return this.kept.size;
  }
}

/** The answer's result, or its error thrown. */
export function settle<T>(answer: Answer): T {
  if ('error' in answer) throw answer.error;
  return answer.value as T;
}
