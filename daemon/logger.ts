/**
 * Winston logger for the daemon: JSON lines when stdout is not a terminal (for log shippers),
 * readable lines on a terminal. Only the daemon logs; the client and protocol code throw.
 */
import winston from 'winston';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug'];
export type LogFormat = 'json' | 'pretty' | 'auto';

export interface LoggerOptions {
  level?: LogLevel;
  format?: LogFormat;
  /** Extra transports (tests capture lines with these). */
  transports?: winston.transport[];
  silent?: boolean;
}

const pretty = winston.format.printf(({ level, message, timestamp, ...meta }) => {
  const extra = Object.entries(meta)
    .filter(([k]) => typeof k === 'string')
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join(' ');
  return `${timestamp} ${level.padEnd(5)} ${message}${extra ? ` ${extra}` : ''}`;
});

export function createLogger(opts: LoggerOptions = {}): winston.Logger {
  const format = opts.format === 'auto' || !opts.format ? (process.stdout.isTTY ? 'pretty' : 'json') : opts.format;
  return winston.createLogger({
    level: opts.level ?? 'info',
    silent: opts.silent,
    format:
      format === 'json'
        ? winston.format.combine(winston.format.timestamp(), winston.format.json())
        : winston.format.combine(winston.format.timestamp(), pretty),
    transports: opts.transports ?? [new winston.transports.Console()],
  });
}

export type Logger = winston.Logger;
