/**
 * A check that callers may ask for often (a readiness probe, a metrics scrape) runs once at a time:
 * whoever asks while it runs shares its answer.
 */

/**
 * `fn`, shared while in flight: a call made before the promise of an earlier call has settled gets
 * that promise; a call after it settled runs `fn` again.
 */
export function sharedInFlight<T>(fn: () => Promise<T>): () => Promise<T> {
  let pending: Promise<T> | undefined;
  return () =>
    (pending ??= fn().finally(() => {
      pending = undefined;
    }));
}
