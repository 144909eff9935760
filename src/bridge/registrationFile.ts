import { readFileSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import type { MatrixConfig, ProviderConfig } from "../config/config";
import {
  RegistrationError,
  buildRegistration,
  parseRegistration,
  registrationYaml,
  type AppserviceIdentity,
  type Registration,
} from "./registration";

export function identityOf(matrix: MatrixConfig): AppserviceIdentity {
  return {
    id: matrix.appservice.id,
    domain: matrix.domain,
    senderLocalpart: matrix.appservice.senderLocalpart,
    userPrefix: matrix.appservice.userPrefix,
    aliasPrefix: matrix.appservice.aliasPrefix,
  };
}

/** Writes a fresh registration for the config (mode 0600: it holds the tokens); returns its path. */
export function writeRegistration(config: ProviderConfig, url: string, file: string | undefined): string {
  if (config.matrix === undefined) {
    throw new RegistrationError("the config has no homeserver section: there is no appservice to register");
  }
  const path = file === undefined ? config.matrix.appservice.registrationPath : resolve(file);
  const registration = buildRegistration(identityOf(config.matrix), url);
  writeFileSync(path, registrationYaml(registration), { mode: 0o600 });
  return path;
}

/** Reads and checks the registration the config names; a clear error for anything wrong. */
export function readRegistration(matrix: MatrixConfig): Registration {
  const path = matrix.appservice.registrationPath;
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new RegistrationError(
      `cannot read the registration ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): ` +
        "write it with `-r -u <appservice URL>` and give it to the homeserver",
    );
  }
  return parseRegistration(text, identityOf(matrix), path);
}
