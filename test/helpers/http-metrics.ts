/**
 * Reading a daemon's HTTP listener as Prometheus and a health checker would: GET a path, and
 * parse /metrics (the text exposition) into samples.
 */

export interface HttpAnswer {
  status: number;
  contentType: string;
  text: string;
}

export async function httpGet(baseUrl: string, path: string, method = 'GET'): Promise<HttpAnswer> {
  const res = await fetch(`${baseUrl}${path}`, { method, signal: AbortSignal.timeout(10_000) });
  return { status: res.status, contentType: res.headers.get('content-type') ?? '', text: await res.text() };
}

/** One scrape: each sample's value by its name and labels. */
export class Scrape {
  constructor(
    readonly text: string,
    private readonly samples: { name: string; labels: Record<string, string>; value: number }[],
  ) {}

  /** Every sample of `name` whose labels include `labels`. */
  all(name: string, labels: Record<string, string> = {}): { labels: Record<string, string>; value: number }[] {
    return this.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  }

  /** The one sample of `name` with `labels` (throws if there is not exactly one). */
  value(name: string, labels: Record<string, string> = {}): number {
    const found = this.all(name, labels);
    if (found.length !== 1) throw new Error(`${found.length} samples of ${name} ${JSON.stringify(labels)} in:\n${this.text}`);
    return found[0]!.value;
  }

  /** The sum over the samples of `name` with `labels`. */
  sum(name: string, labels: Record<string, string> = {}): number {
    return this.all(name, labels).reduce((n, s) => n + s.value, 0);
  }
}

export async function scrape(baseUrl: string): Promise<Scrape> {
  const res = await httpGet(baseUrl, '/metrics');
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}: ${res.text}`);
  return parseExposition(res.text);
}

export function parseExposition(text: string): Scrape {
  const samples: { name: string; labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return new Scrape(text, samples);
}
