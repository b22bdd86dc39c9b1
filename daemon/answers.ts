/**
 * The answers a daemon gave to requests with an id, kept for a while so that a copy of a request
 * (a client sends one when no answer came in time) arriving after the answer gets the same answer
 * and is not done again: a grant after a "locked", or an unlock after a "nothing to unlock", would
 * be a change the client was told did not happen. Bounded: past `max`, the oldest go first.
 */
export type Answer = { value: unknown } | { error: unknown };

export class AnswerMemory {
  private readonly kept = new Map<string, { answer: Answer; until: number }>();

  constructor(
    private readonly keepMs: number,
    private readonly max: number,
  ) {}

  get(id: string, now: number): Answer | undefined {
    const k = this.kept.get(id);
    if (k === undefined || k.until <= now) return undefined;
    return k.answer;
  }

  set(id: string, answer: Answer, now: number): void {
    this.kept.delete(id);
    this.kept.set(id, { answer, until: now + this.keepMs });
    // Kept in the order they were answered, each for the same time: the stale ones are in front.
    for (const [oldest, k] of this.kept) {
      if (k.until > now && this.kept.size <= this.max) break;
      this.kept.delete(oldest);
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
