import type { KvStore } from "../store/kv";

const SEP = "\u0000";

/**
 * LM-04 §Transaction Identifiers: a request repeated with the same transaction
 * ID (per origin and endpoint) gets the first answer and is processed once.
 * Answers are kept durably; a request still being processed is joined.
 */
export class TransactionStore {
  private readonly running = new Map<string, Promise<unknown>>();

  constructor(private readonly kv: KvStore) {}

  async once<T>(origin: string, endpoint: string, txnId: string, process: () => Promise<T>): Promise<T> {
    const key = `t${SEP}${origin}${SEP}${endpoint}${SEP}${txnId}`;
    const running = this.running.get(key);
    if (running !== undefined) return running as Promise<T>;
    const stored = await this.kv.get(key);
    if (stored !== undefined) return (JSON.parse(stored) as { answer: T }).answer;
    const work = (async () => {
      const answer = await process();
      await this.kv.commit([{ type: "put", key, value: JSON.stringify({ answer }) }]);
      return answer;
    })();
    this.running.set(key, work);
    try {
      return await work;
    } finally {
      this.running.delete(key);
    }
  }
}
