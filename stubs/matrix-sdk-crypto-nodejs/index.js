"use strict";
// The appservice never uses Matrix-side end-to-end encryption; the real package
// downloads a native binary at install time, which cannot work offline.
function unavailable(name) {
  return new Proxy(function () {}, {
    get(_target, prop) {
      if (prop === "prototype") return {};
      throw new Error(`@matrix-org/matrix-sdk-crypto-nodejs.${name} is not available in this build`);
    },
    construct() {
      throw new Error(`@matrix-org/matrix-sdk-crypto-nodejs.${name} is not available in this build`);
    },
    apply() {
      throw new Error(`@matrix-org/matrix-sdk-crypto-nodejs.${name} is not available in this build`);
    },
  });
}
module.exports = new Proxy(
  {},
  {
    get(_target, prop) {
      if (prop === "__esModule") return false;
      if (typeof prop !== "string") return undefined;
      return unavailable(prop);
    },
  },
);
