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
  venvScript,
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
  it("names what the setting holds when VS Code did not apply it", async () => {
    const note = '["/home/me/.venv/bin/cato-lsp"] in User settings, not applied here';
    const missing = await discoverServer({ ...linux, configuredNote: note }, fakeProbes({}));
    const unset = await discoverServer(linux, fakeProbes({}));
    expect(missing.found).toBe(false);
    expect(!missing.found && missing.message).toContain(`the cato.server.command setting (${note})`);
    expect(!unset.found && unset.message).toContain("the cato.server.command setting (not set)");
  });

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
    const found = await discoverServer(
      { ...linux, interpreter: "/venv/bin/python", home: "/home/me", pipxBinDir: "/opt/pipx" },
      fakeProbes({}),
    );
    expect(found.found).toBe(false);
    if (!found.found) {
      expect(found.installCommand).toBe("pipx install <a CATO checkout or cato_assistant wheel>");
      expect(found.message).toContain("pipx install");
      expect(found.message).toContain("scripts/install");
      expect(found.message).toContain("/venv/bin/python");
      expect(found.message).toContain("PATH, /opt/pipx/cato-lsp, /home/me/.local/bin/cato-lsp.");
    }
  });

  it("finds a trusted workspace's .venv/bin/cato-lsp before PATH", async () => {
    const probes = fakeProbes({
      files: ["/ws/b/.venv/bin/cato-lsp"],
      path: { "cato-lsp": "/usr/local/bin/cato-lsp" },
    });
    const input = { ...linux, workspaceFolders: ["/ws/a", "/ws/b"], workspaceTrusted: true };
    const found = await discoverServer(input, probes);
    expect(server(found)).toEqual({
      command: "/ws/b/.venv/bin/cato-lsp",
      args: [],
      source: "workspace-venv",
    });
    expect(probes.calls).toEqual(["exec /ws/a/.venv/bin/cato-lsp", "exec /ws/b/.venv/bin/cato-lsp"]);
  });

  it("does not run a program of an untrusted workspace, and says so", async () => {
    const probes = fakeProbes({ files: ["/ws/.venv/bin/cato-lsp"] });
    const found = await discoverServer(
      { ...linux, workspaceFolders: ["/ws"], workspaceTrusted: false },
      probes,
    );
    expect(found.found).toBe(false);
    expect(probes.calls).not.toContain("exec /ws/.venv/bin/cato-lsp");
    expect(found.found ? "" : found.message).toContain("the workspace is not trusted");
  });

  it("finds a pipx install: $PIPX_BIN_DIR, then ~/.local/bin, after PATH", async () => {
    const local = fakeProbes({ files: ["/home/me/.local/bin/cato-lsp"] });
    const input = { ...linux, home: "/home/me", pipxBinDir: "/opt/pipx" };
    expect(server(await discoverServer(input, local))).toEqual({
      command: "/home/me/.local/bin/cato-lsp",
      args: [],
      source: "pipx",
    });
    expect(local.calls.slice(-2)).toEqual(["exec /opt/pipx/cato-lsp", "exec /home/me/.local/bin/cato-lsp"]);
    const pipxDir = fakeProbes({ files: ["/opt/pipx/cato-lsp", "/home/me/.local/bin/cato-lsp"] });
    expect(server(await discoverServer(input, pipxDir)).command).toBe("/opt/pipx/cato-lsp");
    const onPath = fakeProbes({ files: ["/opt/pipx/cato-lsp"], path: { "cato-lsp": "/usr/bin/cato-lsp" } });
    expect(server(await discoverServer(input, onPath)).source).toBe("path");
  });

  it("offers `pipx install` of the CATO checkout open in the workspace", async () => {
    const probes = fakeProbes({ files: ["/src/cato/scripts/install"] });
    const input = { ...linux, workspaceFolders: ["/src/other", "/src/cato"], workspaceTrusted: true };
    const found = await discoverServer(input, probes);
    expect(found.found).toBe(false);
    if (!found.found) {
      expect(found.installCommand).toBe("pipx install /src/cato");
      expect(found.message).toContain("/src/other/.venv/bin/cato-lsp, /src/cato/.venv/bin/cato-lsp, PATH");
    }
  });

  it("uses Windows names: Scripts\\cato-lsp.exe, python", async () => {
    const interpreter = "C:\\venv\\Scripts\\python.exe";
    expect(scriptNextTo(interpreter, "win32")).toBe("C:\\venv\\Scripts\\cato-lsp.exe");
    const probes = fakeProbes({ path: { "cato-lsp.exe": "C:\\bin\\cato-lsp.exe" } });
    const found = await discoverServer({ configured: [], interpreter: undefined, platform: "win32" }, probes);
    expect(server(found).command).toBe("C:\\bin\\cato-lsp.exe");
  });

  it("quotes a checkout path with spaces in the install command", () => {
    expect(installCommand("/Users/me/My Code/cato")).toBe('pipx install "/Users/me/My Code/cato"');
    expect(installCommand(undefined)).toBe("pipx install <a CATO checkout or cato_assistant wheel>");
  });

  it("uses .venv\\Scripts on Windows", () => {
    expect(venvScript("C:\\src\\proj", "win32")).toBe("C:\\src\\proj\\.venv\\Scripts\\cato-lsp.exe");
    expect(venvScript("/src/proj", "linux")).toBe("/src/proj/.venv/bin/cato-lsp");
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
