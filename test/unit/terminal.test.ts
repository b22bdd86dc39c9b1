/**
 * forTerminal: what the commands' human output does to text from others (holders, names, ids).
 */
import { forTerminal } from '../../cli/terminal';

describe('forTerminal', () => {
  it('writes C0 controls, DEL and C1 controls as escapes; named ones by name', () => {
    expect(forTerminal('red\x1b[31mtext')).toBe('red\\x1b[31mtext');
    expect(forTerminal('a\nb\r\tc')).toBe('a\\nb\\r\\tc');
    expect(forTerminal('\x00\x07\x08\x7f')).toBe('\\x00\\x07\\x08\\x7f');
    expect(forTerminal('csi\u009b2J nel\u0085 \u0080\u009f')).toBe('csi\\x9b2J nel\\x85 \\x80\\x9f');
  });

  it('leaves every other character alone, backslashes and non-ASCII text included', () => {
    const text = `web-1 C:\\jobs "q" 'x' é ü ß 日本 🔒 \u00a0\u00a9`;
    expect(forTerminal(text)).toBe(text);
  });

  it('leaves nothing a terminal would act on', () => {
    let all = '';
    for (let c = 0; c < 0x100; c++) all += String.fromCharCode(c);
    // eslint-disable-next-line no-control-regex -- the controls must be gone
    expect(forTerminal(all)).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
    expect(forTerminal(forTerminal(all))).toBe(forTerminal(all));
  });
});
