/**
 * Numeric flags of the lock-management commands. A flag declared `type: 'number'` reaches any
 * check as NaN when what was typed is not a number ("got NaN"), so these flags are left untyped
 * (yargs keeps `-t abc` as "abc", and turns `-t 30` into 30) and checked here, quoting what was
 * typed.
 */
import type { Options } from 'yargs';

export interface NumberSpec {
  describe: string;
  alias?: string;
  default?: number;
  /** What the number counts, for the error message: "seconds", "milliseconds". */
  unit?: string;
  integer?: boolean;
  /** Greater than 0. */
  positive?: boolean;
  min?: number;
  max?: number;
}

/** "a non-negative number of seconds", "an integer from 0 to 255"... */
function wanted(spec: NumberSpec): string {
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
 * `--<flag>` and its yargs option, to spread into `.option(...)`: its value is a number within the
 * spec, or a usage error quoting what was typed.
 */
export function numberOption<K extends string>(flag: K, spec: NumberSpec): [K, Options & { coerce: (raw: unknown) => number }] {
  const check = (raw: unknown): number => {
    if (Array.isArray(raw)) throw new Error(`--${flag} was given more than once (${raw.map(String).join(', ')}): give it once`);
    const n = typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN;
    const ok =
      Number.isFinite(n) &&
      (!spec.integer || Number.isSafeInteger(n)) &&
      (!spec.positive || n > 0) &&
      (spec.min === undefined || n >= spec.min) &&
      (spec.max === undefined || n <= spec.max);
    if (!ok) throw new Error(`--${flag} must be ${wanted(spec)}, got ${JSON.stringify(String(raw))}`);
    return n;
  };
  const option: Options & { coerce: (raw: unknown) => number } = { describe: spec.describe, requiresArg: true, coerce: check };
  if (spec.alias !== undefined) option.alias = spec.alias;
  // yargs counts a `default` key as a default even when it is undefined.
  if (spec.default !== undefined) option.default = spec.default;
  return [flag, option];
}
