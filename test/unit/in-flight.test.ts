/**
 * sharedInFlight: the callers that come while a call runs share it; once it has settled, fulfilled
 * or rejected, the next caller runs it again.
 */
import { sharedInFlight } from '../../daemon/in-flight';

/** A call whose promise the test settles. */
function deferred<T>() {
  let resolve!: (value: T) => void;
  let reject!: (err: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

describe('sharedInFlight', () => {
  it('gives the callers that come while a call runs that call, and runs it again once it has answered', async () => {
    const calls: ReturnType<typeof deferred<number>>[] = [];
    const check = sharedInFlight(() => {
      const call = deferred<number>();
      calls.push(call);
      return call.promise;
    });
    const first = check();
    const second = check();
    expect(calls).toHaveLength(1);
    calls[0]!.resolve(1);
    await expect(Promise.all([first, second])).resolves.toEqual([1, 1]);

    const third = check();
    expect(calls).toHaveLength(2);
    calls[1]!.resolve(2);
    await expect(third).resolves.toBe(2);
  });

  it('shares a failure with the callers that came meanwhile, and runs again after it', async () => {
    let runs = 0;
    const check = sharedInFlight(async () => {
      runs++;
      if (runs === 1) throw new Error('down');
      return 'up';
    });
    const [a, b] = [check(), check()];
    await expect(a).rejects.toThrow('down');
    await expect(b).rejects.toThrow('down');
    expect(runs).toBe(1);
    await expect(check()).resolves.toBe('up');
    expect(runs).toBe(2);
  });
});
