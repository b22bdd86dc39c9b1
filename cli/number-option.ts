/**
 * Numeric flags of the lock-management commands. A flag declared `type: 'number'` reaches any
 * check as NaN when what was typed is not a number ("got NaN"), so these flags are left untyped
 * (yargs keeps `-t abc` as "abc", and turns `-t 30` into 30) and checked here, quoting what was
 * typed.
 */
import type { Options } from 'yargs';

/** Which numbers a value may be. */
export interface NumberRule {
  /** What the number counts, for the error message: "seconds", "milliseconds". */
  unit?: string;
  integer?: boolean;
  /** Greater than 0. */
  positive?: boolean;
  min?: number;
  max?: number;
}

export interface NumberSpec extends NumberRule {
  describe: string;
  alias?: string;
  default?: number;
}

/** "a non-negative number of seconds", "an integer from 0 to 255"... */
function wanted(spec: NumberRule): string {
  const kind = spec.integer ? 'integer' : 'number';
  const unit = spec.unit ? ` of ${spec.unit}` : '';
  if (spec.positive) return `a positive ${kind}${unit}`;
  if (spec.min === 0 && spec.max === undefined) return `a non-negative ${kind}${unit}`;
  const article = spec.integer ? 'an' : 'a';
  if (spec.min !== undefined && spec.max !== undefined) return `${article} ${kind}${unit} from ${spec.min} to ${spec.max}`;
  if (spec.min !== undefined) return `${article} ${kind}${unit} of ${spec.min} or more`;
  return `${article} ${kind}${unit}`;
}

/**
 * `raw` (a number, or the text typed) as a number the rule allows; otherwise the error `fail` makes
 * of what is wrong: `must be a positive number of milliseconds, got "soon"`.
 */
export function checkNumber(raw: unknown, rule: NumberRule, fail: (problem: string) => Error): number {
  const n = typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN;
  const ok =
    Number.isFinite(n) &&
    (!rule.integer || Number.isSafeInteger(n)) &&
    (!rule.positive || n > 0) &&
    (rule.min === undefined || n >= rule.min) &&
    (rule.max === undefined || n <= rule.max);
  if (!ok) throw fail(`must be ${wanted(rule)}, got ${JSON.stringify(String(raw))}`);
  return n;
}

/**
 * `--<flag>` and its yargs option, to spread into `.option(...)`: its value is a number within the
 * spec, or a usage error quoting what was typed.
 */
export function numberOption<K extends string>(flag: K, spec: NumberSpec): [K, Options & { coerce: (raw: unknown) => number }] {
  const check = (raw: unknown): number => {
    if (Array.isArray(raw)) throw new Error(`--${flag} was given more than once (${raw.map(String).join(', ')}): give it once`);
    return checkNumber(raw, spec, (problem) => new Error(`--${flag} ${problem}`));
  };
  const option: Options & { coerce: (raw: unknown) => number } = { describe: spec.describe, requiresArg: true, coerce: check };
  if (spec.alias !== undefined) option.alias = spec.alias;
  // yargs counts a `default` key as a default even when it is undefined.
  if (spec.default !== undefined) option.default = spec.default;
  return [flag, option];
}
