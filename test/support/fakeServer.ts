import { keysHandler } from "./expressAuth";
import type { Server } from "node:http";
import express from "express";
import { signRequest } from "../../src/federation/auth";
import { ServerKeysPublisher } from "../../src/federation/keys";
import type { ServerSigningKey } from "../../src/events/signingKey";

/** A fourth server run by the test: it publishes a real key and signs requests like a provider would. */
export interface FakeServer {
  key: ServerSigningKey;
  baseUrl: string;
  close(): Promise<void>;
}

export async function startFakeServer(key: ServerSigningKey, port: number): Promise<FakeServer> {
  const app = express();
  app.get("/_matrix/key/v2/server", keysHandler(new ServerKeysPublisher(key)));
  const server: Server = await new Promise((resolve) => {
    const s = app.listen(port, "127.0.0.1", () => resolve(s));
  });
  return {
    key,
    baseUrl: `http://127.0.0.1:${port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

export interface RawAnswer {
  status: number;
  body: Record<string, unknown>;
}

/**
 * Sends a request to a provider with full control over the bytes: the body
 * text, the Content-Type, and which key signs as which origin.
 */
export async function rawRequest(options: {
  baseUrl: string;
  destination: string;
  method: string;
  path: string;
  body?: string | Buffer;
  contentType?: string;
  signAs?: { origin: string; key: ServerSigningKey };
  signedContent?: unknown;
}): Promise<RawAnswer> {
  const headers: Record<string, string> = {};
  if (options.contentType !== undefined) headers["Content-Type"] = options.contentType;
  if (options.signAs !== undefined) {
    let content = options.signedContent;
    if (content === undefined && typeof options.body === "string") {
      try {
        content = JSON.parse(options.body);
      } catch {
        content = undefined;
      }
    }
    headers.Authorization = signRequest(
      {
        method: options.method,
        uri: options.path,
        origin: options.signAs.origin,
        destination: options.destination,
        ...(content === undefined ? {} : { content }),
      },
      options.signAs.key,
    );
  }
  const response = await fetch(options.baseUrl + options.path, {
    method: options.method,
    headers,
    ...(options.body === undefined ? {} : { body: options.body }),
  });
  const text = await response.text();
  let body: Record<string, unknown> = {};
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    body = { raw: text };
  }
  return { status: response.status, body };
}
