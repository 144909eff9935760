import { isValidKeyId, parseServerName } from "../../identifiers";
import { FederationError } from "../errors";

/** The parameters of an `X-Matrix` Authorization header (LM-04 §Request Authentication). */
export interface XMatrixAuth {
  origin: string;
  destination: string;
  key: string;
  sig: string;
}

const SCHEME = "X-Matrix";
const TCHAR = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]$/;

function isTchar(c: string): boolean {
  return TCHAR.test(c);
}

function malformed(reason: string): FederationError {
  return FederationError.unauthorized(`malformed Authorization header: ${reason}`);
}

/** Formats the header value; every value is quoted (RFC 9110 §5.6.4). */
export function formatAuthorizationHeader(auth: XMatrixAuth): string {
  const q = (value: string): string => `"${value.replace(/[\\"]/g, "\\$&")}"`;
  return (
    `${SCHEME} origin=${q(auth.origin)},destination=${q(auth.destination)},` +
    `key=${q(auth.key)},sig=${q(auth.sig)}`
  );
}

/**
 * Parses `X-Matrix origin=…,destination=…,key=…,sig=…` per RFC 9110 §11.4:
 * case-insensitive scheme and parameter names, token or quoted-string values
 * (with backslash escapes), empty list elements tolerated, unknown parameters
 * ignored. Missing parameters are refused.
 *
 * LM-04 §Request Authentication names the signature `signature` and writes
 * `sig` in its example; either or both are accepted. RFC 9110 §11.2 has a
 * sender name each parameter once but says nothing of what a recipient does,
 * so a parameter repeated with the same value is accepted (there is no doubt
 * about what was meant) and one repeated with different values, `sig` and
 * `signature` included, is refused.
 */
export function parseAuthorizationHeader(value: string): XMatrixAuth {
  const s = value;
  let i = 0;
  const skipOws = (): void => {
    while (i < s.length && (s[i] === " " || s[i] === "\t")) i++;
  };
  const readToken = (): string => {
    const start = i;
    while (i < s.length && isTchar(s[i]!)) i++;
    return s.slice(start, i);
  };
  const describeAt = (): string =>
    i < s.length ? `${JSON.stringify(s[i])} at position ${i}` : "end of header";

  skipOws();
  const scheme = readToken();
  if (scheme === "") throw malformed("no authorization scheme");
  if (scheme.toLowerCase() !== SCHEME.toLowerCase()) {
    throw FederationError.unauthorized(`Authorization scheme ${JSON.stringify(scheme)} is not ${SCHEME}`);
  }
  if (i < s.length && s[i] !== " ") throw malformed(`unexpected ${describeAt()} after the scheme`);

  const params = new Map<string, { value: string; name: string }>();
  while (true) {
    skipOws();
    while (i < s.length && s[i] === ",") {
      i++;
      skipOws();
    }
    if (i >= s.length) break;
    const name = readToken();
    if (name === "") throw malformed(`expected a parameter name, found ${describeAt()}`);
    skipOws();
    if (s[i] !== "=")
      throw malformed(`expected "=" after parameter ${JSON.stringify(name)}, found ${describeAt()}`);
    i++;
    skipOws();
    let paramValue: string;
    if (s[i] === '"') {
      i++;
      paramValue = "";
      while (true) {
        if (i >= s.length) throw malformed(`unterminated quoted value of parameter ${JSON.stringify(name)}`);
        const c = s[i]!;
        if (c === '"') {
          i++;
          break;
        }
        if (c === "\\") {
          i++;
          if (i >= s.length || !isQuotedPairChar(s.charCodeAt(i))) {
            throw malformed(`invalid escape in the value of parameter ${JSON.stringify(name)}`);
          }
          paramValue += s[i];
        } else if (isQdtext(s.charCodeAt(i))) {
          paramValue += c;
        } else {
          throw malformed(`invalid ${describeAt()} in the value of parameter ${JSON.stringify(name)}`);
        }
        i++;
      }
    } else {
      paramValue = readToken();
      if (paramValue === "")
        throw malformed(`parameter ${JSON.stringify(name)} has no value (found ${describeAt()})`);
    }
    const lower = name.toLowerCase();
    const key = lower === "signature" ? "sig" : lower;
    const earlier = params.get(key);
    if (earlier === undefined) {
      params.set(key, { value: paramValue, name: lower });
    } else if (earlier.value !== paramValue) {
      throw malformed(
        earlier.name === lower
          ? `parameter ${JSON.stringify(lower)} is repeated with different values`
          : `parameters ${JSON.stringify(earlier.name)} and ${JSON.stringify(lower)} hold different signatures`,
      );
    }
    skipOws();
    if (i < s.length && s[i] !== ",") {
      throw malformed(`expected "," after parameter ${JSON.stringify(name)}, found ${describeAt()}`);
    }
  }

  const required = (name: keyof XMatrixAuth): string => {
    const found = params.get(name);
    if (found === undefined) throw malformed(`the ${name} parameter is missing`);
    return found.value;
  };
  const origin = required("origin");
  const destination = required("destination");
  const key = required("key");
  const sig = required("sig");
  checkServerName(origin, "origin");
  checkServerName(destination, "destination");
  if (!isValidKeyId(key)) throw malformed(`key ${JSON.stringify(key)} is not a valid key ID`);
  return { origin, destination, key, sig };
}

function checkServerName(value: string, param: string): void {
  try {
    parseServerName(value);
  } catch (err) {
    throw malformed(`${param}: ${(err as Error).message}`);
  }
}

// RFC 9110 §5.6.4: qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
function isQdtext(c: number): boolean {
  return (
    c === 0x09 ||
    c === 0x20 ||
    c === 0x21 ||
    (c >= 0x23 && c <= 0x5b) ||
    (c >= 0x5d && c <= 0x7e) ||
    (c >= 0x80 && c <= 0xff)
  );
}

// RFC 9110 §5.6.4: quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
function isQuotedPairChar(c: number): boolean {
  return c === 0x09 || (c >= 0x20 && c <= 0x7e) || (c >= 0x80 && c <= 0xff);
}
