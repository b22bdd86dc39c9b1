/**
 * Copies of a request arriving after its answer (daemon/handlers.ts, joinCopies): an answer whose
 * outcome the store recorded is looked up there, whatever the copy's attempt says; an answer the
 * store did not record (a refusal, a change of nothing) is given again from the daemon's memory,
 * with no transaction. Over the in-memory store, as the store's only writer (like SQLite).
 */
import { Batcher } from '../../daemon/batcher';
import { systemClock } from '../../daemon/clock';
import { lockHandlers, type RequestContext } from '../../daemon/handlers';
import { WaitQueue } from '../../daemon/waiters';
import { validateRequest } from '../../shared/validate';
import { MemoryStore } from '../helpers/memory-store';

function daemon() {
  const store = new MemoryStore();
  const handlers = lockHandlers(new Batcher(store), new WaitQueue(), systemClock, {
    requestWindowMs: 60_000,
    maxReplyBytes: () => 1 << 20,
    sharedStore: false,
    lockDelayMs: 0,
  });
  const ctx = (): RequestContext => ({ who: { lockedBy: 'copies', process: null, client: null } });
  return { store, handlers, ctx };
}

describe('a copy that arrives after the answer', () => {
  it('of a grant: answered with the grant recorded in the store, a copy or the same first attempt again', async () => {
    const { store, handlers, ctx } = daemon();
    const get = (attempt: number) => validateRequest('get', { name: 'copy.grant', request_id: 'grant-1', attempt });
    const granted = await handlers.get(get(1), ctx());
    expect(store.outcomes.get('grant-1')?.replayed).toBeUndefined();

    expect(await handlers.get(get(2), ctx())).toEqual(granted);
    // Looked up in the store (and so marked as answered to a repeat there).
    expect(store.outcomes.get('grant-1')?.replayed).toBe(true);
    // A first attempt sent twice is a copy too: this daemon recorded the id.
    expect(await handlers.get(get(1), ctx())).toEqual(granted);
    expect([...store.locks.values()].map((l) => l.token)).toEqual([granted.token]);
  });

  it('of a refusal: the same refusal, from memory, though the lock is free by now', async () => {
    const { store, handlers, ctx } = daemon();
    const holder = await handlers.get(validateRequest('get', { name: 'copy.locked' }), ctx());
    const get = (attempt: number) => validateRequest('get', { name: 'copy.locked', request_id: 'locked-1', attempt });
    await expect(handlers.get(get(1), ctx())).rejects.toMatchObject({ code: 'LOCKED' });
    await handlers.unlock(validateRequest('unlock', { name: 'copy.locked', token: holder.token }), ctx());
    const commits = store.commits;
    await expect(handlers.get(get(2), ctx())).rejects.toMatchObject({ code: 'LOCKED', lock: { token: holder.token } });
    expect(store.commits).toBe(commits);
    expect(store.locks.size).toBe(0);
  });
});
