import { MimiError } from "../../src/errors";
import { IdentifierError, type IdentifierKind } from "../../src/identifiers";

const KIND_WORDING: Record<IdentifierKind, string> = {
  server_name: "Invalid server name",
  room_id: "Invalid room ID",
  user_id: "Invalid user ID",
  event_id: "Invalid event ID",
  key_id: "Invalid key ID",
};

export function catchIdentifierError(fn: () => unknown): IdentifierError {
  let caught: unknown;
  let returned: unknown;
  try {
    returned = fn();
  } catch (e) {
    caught = e;
  }
  if (!(caught instanceof IdentifierError)) {
    throw new Error(
      caught === undefined
        ? `expected an IdentifierError, but it returned ${JSON.stringify(returned)}`
        : `expected an IdentifierError, got ${String(caught)}`,
    );
  }
  return caught;
}

/**
 * Runs `fn`, which must throw an IdentifierError of `kind` breaking `rule`,
 * whose message quotes `input` (when it is a short string) and contains every
 * fragment.
 */
export function expectRejected(
  fn: () => unknown,
  kind: IdentifierKind,
  input: unknown,
  rule: string,
  ...fragments: string[]
): IdentifierError {
  const err = catchIdentifierError(fn);
  expect(err).toBeInstanceOf(MimiError);
  expect(err.errcode).toBe("M_INVALID_PARAM");
  expect(err.kind).toBe(kind);
  expect(err.rule).toBe(rule);
  expect(err.message).toContain(KIND_WORDING[kind]);
  expect(err.message).toContain(`(rule ${rule})`);
  if (typeof input === "string" && input.length <= 64) expect(err.message).toContain(JSON.stringify(input));
  for (const fragment of fragments) expect(err.message).toContain(fragment);
  return err;
}
