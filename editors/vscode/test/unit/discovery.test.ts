import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import {
  type Discovery,
  discoverServer,
  installCommand,
  type Probes,
  scriptNextTo,
} from "../../src/discovery";
import { nodeProbes } from "../../src/probes";

/** Probes over an imaginary machine: executable files, importable interpreters, PATH. */
function fakeProbes(machine: {
  files?: string[];
  importers?: string[];
  path?: Record<string, string>;
}): Probes & {
  calls: string[];
} {
  const calls: string[] = [];
  return {
    calls,
    isExecutable: (file) => {
      calls.push(`exec ${file}`);
      return Promise.resolve((machine.files ?? []).includes(file));
    },
    canImport: (python, module) => {
      calls.push(`import ${python} ${module}`);
      return Promise.resolve((machine.importers ?? []).includes(python));
    },
    which: (name) => {
      calls.push(`which ${name}`);
      return Promise.resolve(machine.path?.[name]);
    },
  };
}

const linux = { configured: [], interpreter: undefined, platform: "linux" as const };

function server(found: Discovery): { command: string; args: readonly string[]; source: string } {
  if (!found.found) {
    throw new Error(`expected a server, got: ${found.message}`);
  }
  return found.server;
}

describe("discoverServer", () => {
  it("uses the configured command first, resolving a bare name on PATH", async () => {
    const probes = fakeProbes({ path: { "cato-lsp": "/opt/bin/cato-lsp" }, files: ["/venv/bin/cato-lsp"] });
    const found = await discoverServer(
      { ...linux, configured: ["cato-lsp", "--log", "debug"], interpreter: "/venv/bin/python" },
      probes,
    );
    expect(server(found)).toEqual({
      command: "/opt/bin/cato-lsp",
      args: ["--log", "debug"],
      source: "setting",
    });
    expect(probes.calls).toEqual(["which cato-lsp"]);
  });

  it("reports a configured command that does not exist, without searching elsewhere", async () => {
    const probes = fakeProbes({ path: { "cato-lsp": "/usr/bin/cato-lsp" } });
    const found = await discoverServer({ ...linux, configured: ["/nope/cato-lsp"] }, probes);
    expect(found.found).toBe(false);
    expect(found.found ? "" : found.message).toContain('"/nope/cato-lsp"');
  });

  it("takes the cato-lsp script next to the Python extension's interpreter", async () => {
    const probes = fakeProbes({ files: ["/venv/bin/cato-lsp"], path: { "cato-lsp": "/usr/bin/cato-lsp" } });
    const found = await discoverServer({ ...linux, interpreter: "/venv/bin/python" }, probes);
    expect(server(found)).toEqual({ command: "/venv/bin/cato-lsp", args: [], source: "python-extension" });
  });

  it("falls back to `python -m cato_lsp` when the interpreter imports it without the script", async () => {
    const probes = fakeProbes({ importers: ["/venv/bin/python"] });
    const found = await discoverServer({ ...linux, interpreter: "/venv/bin/python" }, probes);
    expect(server(found)).toEqual({
      command: "/venv/bin/python",
      args: ["-m", "cato_lsp"],
      source: "python-extension",
    });
  });

  it("searches PATH when the interpreter lacks the server", async () => {
    const probes = fakeProbes({ path: { "cato-lsp": "/usr/local/bin/cato-lsp" } });
    const found = await discoverServer({ ...linux, interpreter: "/venv/bin/python" }, probes);
    expect(server(found)).toEqual({ command: "/usr/local/bin/cato-lsp", args: [], source: "path" });
  });

  it("tries a python on PATH that can import the module", async () => {
    const probes = fakeProbes({ path: { python3: "/usr/bin/python3" }, importers: ["/usr/bin/python3"] });
    const found = await discoverServer(linux, probes);
    expect(server(found)).toEqual({ command: "/usr/bin/python3", args: ["-m", "cato_lsp"], source: "path" });
  });

  it("says where it looked and how to install when nothing has the server", async () => {
    const found = await discoverServer({ ...linux, interpreter: "/venv/bin/python" }, fakeProbes({}));
    expect(found.found).toBe(false);
    if (!found.found) {
      expect(found.installCommand).toBe("/venv/bin/python -m pip install cato-assistant");
      expect(found.message).toContain("pip install cato-assistant");
      expect(found.message).toContain("scripts/install");
      expect(found.message).toContain("/venv/bin/python");
      expect(found.message).toContain("PATH");
    }
  });

  it("uses Windows names: Scripts\\cato-lsp.exe, python", async () => {
    const interpreter = "C:\\venv\\Scripts\\python.exe";
    expect(scriptNextTo(interpreter, "win32")).toBe("C:\\venv\\Scripts\\cato-lsp.exe");
    const probes = fakeProbes({ path: { "cato-lsp.exe": "C:\\bin\\cato-lsp.exe" } });
    const found = await discoverServer({ configured: [], interpreter: undefined, platform: "win32" }, probes);
    expect(server(found).command).toBe("C:\\bin\\cato-lsp.exe");
  });

  it("quotes an interpreter path with spaces in the install command", () => {
    expect(installCommand("/Users/me/My Envs/bin/python")).toBe(
      '"/Users/me/My Envs/bin/python" -m pip install cato-assistant',
    );
    expect(installCommand(undefined)).toBe("python3 -m pip install cato-assistant");
  });
});

describe.skipIf(process.platform === "win32")("nodeProbes on a real file system", () => {
  let root = "";
  let bin = "";

  beforeAll(async () => {
    root = await mkdtemp(path.join(tmpdir(), "cato-probes-"));
    bin = path.join(root, "bin");
    await mkdir(bin);
    // An interpreter that "imports" only cato_lsp, and a script that is not executable.
    await writeFile(
      path.join(bin, "python3"),
      '#!/bin/sh\ncase "$2" in "import cato_lsp") exit 0;; esac\nexit 1\n',
    );
    await chmod(path.join(bin, "python3"), 0o755);
    await writeFile(path.join(bin, "cato-lsp"), "#!/bin/sh\n");
    await chmod(path.join(bin, "cato-lsp"), 0o644);
  });

  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it("skips a file without the executable bit and finds the interpreter that imports the server", async () => {
    const probes = nodeProbes({ PATH: [path.join(root, "missing"), bin].join(path.delimiter) });
    expect(await probes.isExecutable(path.join(bin, "cato-lsp"))).toBe(false);
    expect(await probes.which("python3")).toBe(path.join(bin, "python3"));
    expect(await probes.canImport(path.join(bin, "python3"), "cato_lsp")).toBe(true);
    expect(await probes.canImport(path.join(bin, "python3"), "numpy")).toBe(false);
    const found = await discoverServer(linux, probes);
    expect(server(found)).toEqual({
      command: path.join(bin, "python3"),
      args: ["-m", "cato_lsp"],
      source: "path",
    });
  });

  it("does not take a directory for an executable", async () => {
    const probes = nodeProbes({ PATH: root });
    expect(await probes.isExecutable(bin)).toBe(false);
    expect(await probes.which("bin")).toBeUndefined();
  });
});
