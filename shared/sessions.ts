/**
 * A session's id is a credential: whoever knows it can keep the session alive, close it (releasing
 * its locks at once) or take locks in it. So lock records (replies to anyone, events) name a
 * lock's session by a digest of the id instead: enough to tell which locks share a session, of no
 * use for acting on it.
 */
import { createHash } from 'node:crypto';

export function publicSessionId(id: string): string {
  return `s-${createHash('sha256').update(id).digest('base64url').slice(0, 22)}`;
}
