/**
 * Text from others (a lock's holder, its name, a daemon's id) on a terminal: control characters
 * would be obeyed, not shown — an escape sequence can recolour, move the cursor, retitle the
 * window or hide what follows, and a newline forge a line of output. The human output of the
 * commands shows them escaped instead; --json keeps every value exact.
 */

// C0 controls, DEL and C1 controls (U+0080-U+009F: 8-bit CSI, OSC... on some terminals).
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/g;
const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/** `text` with each control character written as an escape: `\n`, `\t`, `\r`, else `\x1b`. */
export function forTerminal(text: string): string {
  return text.replace(CONTROL, (c) => NAMED[c] ?? `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}
