import { canonicalize as secondImplementation } from "json-canonicalize";
import { canonicalJson } from "../../src/events/canonicalJson";
import { EventFormatError } from "../../src/events/errors";
import { seededRandom } from "../support/random";

describe("RFC 8785 canonical JSON", () => {
  it.each([
    [
      "sorts keys by UTF-16 code units",
      { b: 1, a: 2, "\u20ac": 3, "\ud83d\ude00": 4, "\ufb33": 5 },
      '{"a":2,"b":1,"\u20ac":3,"\ud83d\ude00":4,"\ufb33":5}',
    ],
    ["nests and keeps array order", { z: [3, { y: 1, x: 2 }], a: null }, '{"a":null,"z":[3,{"x":2,"y":1}]}'],
    [
      "serialises numbers the ECMAScript way",
      [1e21, 1e-7, 0.1, -0, 100, 5e-324],
      "[1e+21,1e-7,0.1,0,100,5e-324]",
    ],
    [
      "escapes only what JSON requires",
      { s: '\u0000\u001f"\\/\u007f\u00e9\u2028' },
      '{"s":"\\u0000\\u001f\\"\\\\/\u007f\u00e9\u2028"}',
    ],
    ["has no whitespace", { a: [true, false, "x y"] }, '{"a":[true,false,"x y"]}'],
  ])("%s", (_name, value, expected) => {
    expect(canonicalJson(value)).toBe(expected);
  });

  it.each([
    ["NaN", NaN],
    ["Infinity", Infinity],
    ["undefined", undefined],
  ])("refuses %s", (_name, value) => {
    expect(() => canonicalJson(value)).toThrow(EventFormatError);
  });

  function randomString(rand: () => number): string {
    const length = Math.floor(rand() * 12);
    let s = "";
    for (let i = 0; i < length; i++) {
      const pick = rand();
      if (pick < 0.5) s += String.fromCharCode(32 + Math.floor(rand() * 95));
      else if (pick < 0.65) s += String.fromCharCode(Math.floor(rand() * 32));
      else if (pick < 0.85) s += String.fromCharCode(0x80 + Math.floor(rand() * 0xd700));
      else s += String.fromCodePoint(0x10000 + Math.floor(rand() * 0xfffff));
    }
    return s;
  }

  function randomNumber(rand: () => number): number {
    const pick = rand();
    if (pick < 0.4) return Math.floor((rand() - 0.5) * 2 ** 53);
    if (pick < 0.7) return (rand() - 0.5) * 10 ** Math.floor(rand() * 40 - 20);
    return Math.floor(rand() * 1000);
  }

  function randomValue(rand: () => number, depth: number): unknown {
    const pick = rand();
    if (depth > 3 || pick < 0.3) {
      const leaf = rand();
      if (leaf < 0.4) return randomString(rand);
      if (leaf < 0.8) return randomNumber(rand);
      if (leaf < 0.9) return rand() < 0.5;
      return null;
    }
    if (pick < 0.6) return Array.from({ length: Math.floor(rand() * 5) }, () => randomValue(rand, depth + 1));
    const object: Record<string, unknown> = {};
    const size = Math.floor(rand() * 6);
    for (let i = 0; i < size; i++) object[randomString(rand)] = randomValue(rand, depth + 1);
    return object;
  }

  it("agrees with a second RFC 8785 implementation on 5,000 generated values", () => {
    const rand = seededRandom(8785);
    let compared = 0;
    for (let i = 0; i < 5000; i++) {
      const value = randomValue(rand, 0);
      expect(canonicalJson(value)).toBe(secondImplementation(value));
      compared++;
    }
    expect(compared).toBe(5000);
  });

  it("round-trips: parsing canonical output and canonicalising again is stable", () => {
    const rand = seededRandom(42);
    for (let i = 0; i < 500; i++) {
      const once = canonicalJson(randomValue(rand, 0));
      expect(canonicalJson(JSON.parse(once))).toBe(once);
    }
  });
});
