/**
 * Module-level functions that use one default client, connected on first use from the
 * environment: LOCKMGR_NATS_URL (default nats://127.0.0.1:4222), LOCKMGR_PREFIX (default lock), and
 * the login and TLS variables (LOCKMGR_NATS_TOKEN, LOCKMGR_TLS_CA...) as LockClient.connect() reads them.
 * Call `close()` when done so the process can exit.
 */
import type { Lock, LockSetResult } from './lock';
import {
  LockClient,
  type GetLockOptions,
  type ListLocksOptions,
  type RenewLockOptions,
  type RequestOptions,
  type SetLockOptions,
} from './lock-client';
import type { LockManager, WithLockOptions } from './lock-manager';

let defaultClient: Promise<LockClient> | undefined;

/** The shared default client (connected on first use). */
export function getDefaultClient(): Promise<LockClient> {
  defaultClient ??= LockClient.connect().catch((err) => {
    defaultClient = undefined;
    throw err;
  });
  return defaultClient;
}

export async function setLock(...args: (string | string[] | SetLockOptions)[]): Promise<LockSetResult> {
  return (await getDefaultClient()).setLock(...args);
}
export async function getLock(name: string, options?: GetLockOptions): Promise<Lock> {
  return (await getDefaultClient()).getLock(name, options);
}
export async function unlock(lock: string | Lock, options?: RequestOptions): Promise<boolean> {
  return (await getDefaultClient()).unlock(lock, options);
}
export async function renewLock(lock: string | Lock, options?: RenewLockOptions): Promise<Lock> {
  return (await getDefaultClient()).renewLock(lock, options);
}
export async function isLocked(lock: string | Lock, options?: RequestOptions): Promise<boolean> {
  return (await getDefaultClient()).isLocked(lock, options);
}
export async function listLocks(options?: Omit<ListLocksOptions, 'after' | 'limit'>): Promise<Lock[]> {
  return (await getDefaultClient()).listLocks(options);
}
export async function cleanLocks(options?: RequestOptions): Promise<number> {
  return (await getDefaultClient()).cleanLocks(options);
}
export async function resetLocks(options?: RequestOptions): Promise<number> {
  return (await getDefaultClient()).resetLocks(options);
}
export async function withLock<T>(name: string, options: WithLockOptions, fn: (mgr: LockManager) => Promise<T> | T): Promise<T> {
  return (await getDefaultClient()).withLock(name, options, fn);
}
/** Close the default client's connection (a later call connects again). */
export async function close(): Promise<void> {
  const pending = defaultClient;
  defaultClient = undefined;
  if (pending) await (await pending).close();
}
