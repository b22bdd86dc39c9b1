import { STORES } from '../helpers/databases';
import { startStack, type Stack } from '../helpers/stack';

describe.each(STORES)('lock service on %s', (store) => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ store });
  });
  afterAll(async () => {
    await stack?.stop();
  });

  it('creates two locks and renews them, reporting counts and statuses like set_lock', async () => {
    const res = await stack.client.setLock('hello', 'world');
    expect(res.counts).toEqual({ created: 2, renewed: 0, skip_create: 0, skip_renew: 0 });
    expect(res.statuses[0]).toEqual(['hello', { was_locked: false, status: 'create', locked: true }]);
    const again = await stack.client.setLock('hello', 'world');
    expect(again.counts).toEqual({ created: 0, renewed: 2, skip_create: 0, skip_renew: 0 });
    expect(again.statuses[1]).toEqual(['world', { was_locked: true, status: 'extend', locked: true }]);
    expect(again.locks.map((l) => l.token)).toEqual(res.locks.map((l) => l.token));
  });
});
