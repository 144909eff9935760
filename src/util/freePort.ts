import { randomInt } from "node:crypto";
import { createServer } from "node:net";

/**
 * Ports handed out lie below Linux's ephemeral range (32768-60999), where the kernel picks the
 * local ports of outgoing connections: a port chosen there could be taken by a client socket
 * (an HTTP or database connection) before its server listens on it.
 */
const LOW = 20_000;
const HIGH = 32_767;

/** A TCP port free on 127.0.0.1 right now, for set-ups that must know ports before they start. */
export async function freePort(): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    const port = randomInt(LOW, HIGH + 1);
    if (await canListen(port)) return port;
    if (attempt >= 200) throw new Error(`no free port found between ${LOW} and ${HIGH}`);
  }
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}
