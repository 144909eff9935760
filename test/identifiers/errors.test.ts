import { MimiError } from "../../src/errors";
import { IdentifierError, parseUserId } from "../../src/identifiers";
import { catchIdentifierError } from "./expectIdentifierError";

describe("IdentifierError", () => {
  it("is a MimiError with M_INVALID_PARAM, its own name, kind and rule", () => {
    const err = new IdentifierError("room_id", "x", "room_id.sigil", 'must start with the sigil "!"');
    expect(err).toBeInstanceOf(MimiError);
    expect(err).toBeInstanceOf(Error);
    expect(err.name).toBe("IdentifierError");
    expect(err.errcode).toBe("M_INVALID_PARAM");
    expect(err.kind).toBe("room_id");
    expect(err.rule).toBe("room_id.sigil");
    expect(err.message).toBe('Invalid room ID "x": must start with the sigil "!" (rule room_id.sigil)');
  });

  it("serialises to the federation error shape", () => {
    const err = catchIdentifierError(() => parseUserId("@Alice:example.org"));
    expect(JSON.parse(JSON.stringify(err))).toEqual({ errcode: "M_INVALID_PARAM", error: err.message });
  });

  it("quotes long values truncated to 64 characters and gives their length", () => {
    const input = `@${"a".repeat(299)}`;
    const err = catchIdentifierError(() => parseUserId(input));
    expect(err.rule).toBe("user_id.too_long");
    expect(err.message).toContain(`${JSON.stringify(input.slice(0, 64))}… (300 characters)`);
    expect(err.message).not.toContain(input.slice(0, 65));
  });

  it("JSON-escapes control characters and quotes in the value", () => {
    const input = '@a\n"b:example.org';
    const err = catchIdentifierError(() => parseUserId(input));
    expect(err.message).toContain('"@a\\n\\"b:example.org"');
    expect(err.message).not.toContain("\n");
  });

  it("quotes a 64-character value whole", () => {
    const input = `@${"A".repeat(63)}`;
    const err = catchIdentifierError(() => parseUserId(input));
    expect(err.message).toContain(JSON.stringify(input));
    expect(err.message).not.toContain("…");
  });
});
