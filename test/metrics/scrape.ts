/** Reading the metrics and health listener in tests. */

export interface Answer {
  status: number;
  contentType: string | null;
  text: string;
}

export async function get(port: number, path: string, method = "GET"): Promise<Answer> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { method });
  return {
    status: response.status,
    contentType: response.headers.get("content-type"),
    text: await response.text(),
  };
}

export async function scrape(port: number): Promise<string> {
  const answer = await get(port, "/metrics");
  if (answer.status !== 200) throw new Error(`/metrics answered ${answer.status}: ${answer.text}`);
  return answer.text;
}

/**
 * The value of the sample `name` with exactly `labels` in a Prometheus text exposition;
 * undefined when there is none.
 */
export function sampleValue(
  text: string,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (match === null || match[1] !== name) continue;
    const seen: Record<string, string> = {};
    for (const pair of (match[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      seen[pair[1]!] = pair[2]!.replace(/\\(.)/g, "$1");
    }
    const same =
      Object.keys(seen).length === Object.keys(labels).length &&
      Object.entries(labels).every(([key, value]) => seen[key] === value);
    if (same) return Number(match[3]);
  }
  return undefined;
}

/** Like `sampleValue`, for a sample that must be there. */
export function valueOf(text: string, name: string, labels: Record<string, string> = {}): number {
  const value = sampleValue(text, name, labels);
  if (value === undefined) throw new Error(`no sample ${name}${JSON.stringify(labels)} in:\n${text}`);
  return value;
}
