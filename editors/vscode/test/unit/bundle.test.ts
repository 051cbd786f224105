/**
 * The production bundle is what the .vsix ships: it must hold every dependency but
 * `vscode`, and load in a plain Node process (as VS Code's extension host loads it).
 */
import { execFileSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { builtinModules } from "node:module";
import { tmpdir } from "node:os";
import * as path from "node:path";

import * as esbuild from "esbuild";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const ROOT = path.join(__dirname, "..", "..");

/** Loads the bundle with a stand-in `vscode` whose every member is an empty class. */
const LOADER = `
const Module = require("module");
const load = Module._load;
Module._load = function (request, ...rest) {
  if (request === "vscode") {
    return new Proxy({}, { get: (t, p) => (t[p] ??= class {}) });
  }
  return load.call(this, request, ...rest);
};
const ext = require(process.argv[2]);
console.log(JSON.stringify({ exports: Object.keys(ext).sort() }));
`;

describe("the production bundle", () => {
  let dir = "";
  let result: esbuild.BuildResult<{ metafile: true }>;
  let outfile = "";

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "cato-bundle-"));
    outfile = path.join(dir, "extension.js");
    result = await esbuild.build({
      entryPoints: [path.join(ROOT, "src", "extension.ts")],
      outfile,
      bundle: true,
      platform: "node",
      format: "cjs",
      target: "node20",
      external: ["vscode"],
      minify: true,
      metafile: true,
      logLevel: "silent",
    });
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("leaves only vscode and Node built-ins outside", () => {
    const imports = Object.values(result.metafile.outputs).flatMap((o) => o.imports);
    const external = new Set(imports.filter((i) => i.external).map((i) => i.path.replace(/^node:/, "")));
    const builtins = new Set(builtinModules);
    const foreign = [...external].filter((name) => name !== "vscode" && !builtins.has(name));
    expect(foreign).toEqual([]);
    expect(Object.keys(result.metafile.inputs).some((i) => i.includes("vscode-languageclient"))).toBe(true);
  });

  it("loads in a bare Node process and exports activate and deactivate", async () => {
    const loader = path.join(dir, "load.cjs");
    await writeFile(loader, LOADER);
    const out = execFileSync(process.execPath, [loader, outfile], { encoding: "utf8", timeout: 30_000 });
    expect(JSON.parse(out.trim().split("\n").at(-1) ?? "{}")).toEqual({
      exports: ["activate", "deactivate"],
    });
  });
});
