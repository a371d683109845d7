// Node.js before 20.19 parses a ".js" file of a package without "type": "module" as CommonJS,
// while dcmjs and gl-matrix ship ES module builds as such files. This hook loads a package file
// written with import/export as the module it is. Node.js 20.19 and later detect this themselves,
// and the test then runs load_results.mjs without this hook.
import { readFile } from "node:fs/promises";

const ESM_SYNTAX = /^\s*(import\s[^(]|export\s)/m;

export async function load(url, context, nextLoad) {
  const result = await nextLoad(url, context);
  if (result.format !== "commonjs" || !url.includes("/node_modules/")) {
    return result;
  }
  const source = result.source ?? (await readFile(new URL(url)));
  if (ESM_SYNTAX.test(String(source))) {
    return { format: "module", source, shortCircuit: true };
  }
  return result;
}
