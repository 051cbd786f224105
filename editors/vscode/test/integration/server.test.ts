/**
 * The extension's protocol half against the real Python server (`python -m cato_lsp`)
 * in embedded mode with one fast emulated replica: initialize, inline completion and
 * its accept command, translate file (written to disk by the server, then shown), and the
 * settings as the extension maps them. `CATO_PYTHON` picks the interpreter.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import * as net from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { pathToFileURL } from "node:url";

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { InlineCompletionList } from "vscode-languageserver-protocol";

import { SERVER_KEYS, serverSettings } from "../../src/settings";
import { eventually, groupAlive, LspServer } from "./lspClient";

const PYTHON = process.env["CATO_PYTHON"] ?? "python3";
const WAIT_MS = 90_000;

const SOURCE = [
  "import os",
  "",
  "def load_items(path):",
  "    items = []",
  "    for line in open(path):",
  "        ",
  "    return items",
  "",
].join("\n");

const TO_TRANSLATE = [
  "def add(a, b):",
  '    """Return the sum of a and b."""',
  "    return a + b",
  "",
  "",
  "def scale(values, factor):",
  "    return [v * factor for v in values]",
  "",
].join("\n");

/** One emulated replica, fast, fixed: the quickest embedded orchestrator to start. */
const CATO_TOML = `
[[models]]
name = "tiny"
engine = "emulated"
profile = "tiny@cpu"
speed = 20.0
min_replicas = 1
max_replicas = 1

[provisioner]
policy = "fixed"
`;

interface Manifest {
  contributes: { configuration: { properties: Record<string, { default?: unknown }> } };
}

/** Every contributed setting at its package.json default, as if the user had set it. */
function contributedDefaults(): Record<string, unknown> {
  const file = path.join(__dirname, "..", "..", "package.json");
  const manifest = JSON.parse(readFileSync(file, "utf8")) as Manifest;
  const values: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(manifest.contributes.configuration.properties)) {
    values[key.replace(/^cato\./, "")] = spec.default;
  }
  return values;
}

/** A value of the server's `settings` report (snake_case) for a dotted camelCase key. */
function described(settings: Record<string, unknown>, key: string): unknown {
  let node: unknown = settings;
  for (const part of key.split(".")) {
    const snake = part.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
    node = (node as Record<string, unknown> | undefined)?.[snake];
  }
  return node;
}

function requireServer(): void {
  try {
    execFileSync(PYTHON, ["-c", "import cato_lsp.server"], { stdio: "pipe", timeout: 60_000 });
  } catch (error) {
    throw new Error(
      `${PYTHON} cannot import cato_lsp.server (run scripts/install, or set CATO_PYTHON): ${String(error)}`,
    );
  }
}

function portOpen(url: string): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = net.connect({ host: hostname, port: Number(port) });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

describe("cato-lsp driven by an LSP client", () => {
  let dir = "";
  let server: LspServer;
  /** What the "user" set, as VS Code would hold it (dotted keys under `cato.`). */
  let userSettings: Record<string, unknown> = {};
  const replicaUrls = new Set<string>();
  const serverStatus = async (): Promise<{ settings: Record<string, unknown> }> =>
    (await server.executeCommand("cato.status", [])) as { settings: Record<string, unknown> };

  beforeAll(async () => {
    requireServer();
    dir = await mkdtemp(path.join(tmpdir(), "cato-vscode-it-"));
    await writeFile(path.join(dir, "cato.toml"), CATO_TOML);
    userSettings = { config: "cato.toml", debounceMs: 0, "context.budgetTokens": 1024, languages: ["*"] };
    const paths = { home: dir, workspaceFolder: dir };
    server = LspServer.start({
      python: PYTHON,
      cwd: dir,
      initializationOptions: serverSettings((k) => userSettings[k], undefined, paths),
      settings: () => Promise.resolve(serverSettings((k) => userSettings[k], undefined, paths)),
    });
  }, WAIT_MS);

  afterAll(async () => {
    if (server !== undefined) {
      const { graceful, exitedOnExit } = await server.stop(20_000);
      if (!exitedOnExit) {
        console.warn("cato-lsp did not exit on the `exit` notification; it ended when its stdin closed");
      }
      expect(graceful, `server stderr:\n${server.stderr.join("")}`).toBe(true);
      expect(groupAlive(server.proc.pid)).toBe(false);
      // The replicas the embedded orchestrator started (own process groups) are gone too.
      for (const url of replicaUrls) {
        expect(await portOpen(url), `replica ${url} outlived the server`).toBe(false);
      }
    }
    if (dir !== "") {
      await rm(dir, { recursive: true, force: true });
    }
  }, WAIT_MS);

  it(
    "initializes with inline completion and the extension's commands",
    async () => {
      const result = await server.initialize(dir);
      const caps = result.capabilities;
      expect(caps.inlineCompletionProvider).toBeTruthy();
      expect(caps.completionProvider ?? null).toBeNull();
      expect(caps.executeCommandProvider?.commands).toEqual(
        expect.arrayContaining([
          "cato.summarize",
          "cato.generate",
          "cato.translateFile",
          "cato.status",
          "cato.accept",
        ]),
      );
      expect(result.serverInfo?.name).toBe("cato-lsp");
      // The server pulls the `cato` section right after `initialized`; our mapping answers.
      expect(await eventually(() => server.recorded.configurationRequests[0], 30_000)).toBeDefined();
    },
    WAIT_MS,
  );

  it(
    "answers inline completion on a Python document, and counts its acceptance once",
    async () => {
      const uri = pathToFileURL(path.join(dir, "items.py")).toString();
      await server.open(uri, "python", SOURCE);
      const position = { line: 3, character: 12 }; // after "    items = "
      const result = (await server.connection.sendRequest("textDocument/inlineCompletion", {
        textDocument: { uri },
        position,
        context: { triggerKind: 2 },
      })) as InlineCompletionList;

      expect(result.items.length).toBe(1);
      const item = result.items[0]!;
      expect(typeof item.insertText).toBe("string");
      const text = item.insertText as string;
      expect(text.trim()).not.toBe("");
      expect(text).not.toContain("\n"); // mid-line: one line only
      expect(text).not.toMatch(/<fim_|<\|fim|<PRE>|<SUF>|<MID>/);
      expect(item.range).toEqual({ start: position, end: position });
      expect(item.command?.command).toBe("cato.accept");

      // Accepting runs the item's command; the server counts one acceptance per suggestion.
      const accepted = async (): Promise<unknown> => {
        const report = (await server.executeCommand("cato.status", [])) as {
          completions: Record<string, unknown>;
        };
        return report.completions["accepted"];
      };
      expect(await accepted()).toBe(0);
      const args = item.command?.arguments ?? [];
      await server.executeCommand("cato.accept", args);
      expect(await accepted()).toBe(1);
      await server.executeCommand("cato.accept", args);
      expect(await accepted()).toBe(1);
    },
    WAIT_MS,
  );

  it(
    "translates a file into a new file written next to it, then shown",
    async () => {
      const source = path.join(dir, "mathops.py");
      await writeFile(source, TO_TRANSLATE);
      const uri = pathToFileURL(source).toString();
      await server.open(uri, "python", TO_TRANSLATE);
      const editsBefore = server.recorded.edits.length;

      const result = (await server.executeCommand("cato.translateFile", [
        { uri, targetLanguage: "rust" },
      ])) as Record<string, unknown>;

      const target = path.join(dir, "mathops.rs");
      const targetUri = pathToFileURL(target).toString();
      expect(result).toMatchObject({ applied: true, uri: targetUri, shown: true });

      // Saved on disk by the server (no edit to apply): the editor opens a saved file.
      expect(server.recorded.edits.length).toBe(editsBefore);
      const written = await readFile(target, "utf8");
      expect(written.trim()).not.toBe("");
      expect(written.endsWith("\n")).toBe(true);
      expect(written).not.toMatch(/<fim_|<\|fim|<PRE>|<SUF>|<MID>|```/);
      expect(server.recorded.shown).toContain(targetUri);
      // The long task reported progress from begin to end.
      const kinds = server.recorded.progress.map((p) => p.kind);
      expect(kinds[0]).toBe("begin");
      expect(kinds.at(-1)).toBe("end");
    },
    WAIT_MS,
  );

  it(
    "reports the service's state for the status bar after a task",
    async () => {
      const status = (await server.executeCommand("cato.status", [])) as Record<string, unknown>;
      expect(status["state"]).toBe("ready");
      expect(status["reachable"]).toBe(true);
      expect(status["replicasReady"]).toBe(1);
      const attainment = status["slaAttainment"] as Record<string, number>;
      expect(attainment["translate"]).toBeGreaterThanOrEqual(0);
      expect(attainment["translate"]).toBeLessThanOrEqual(1);
      const orchestrator = status["orchestrator"] as { replicas: { url: string }[] };
      for (const replica of orchestrator.replicas) {
        replicaUrls.add(replica.url);
      }
      expect(replicaUrls.size).toBe(1);
      // The status notification reaches the client too (what feeds the status bar).
      expect(await eventually(() => server.recorded.statuses.at(-1), 10_000)).toMatchObject({
        state: "ready",
      });
    },
    WAIT_MS,
  );

  it(
    "documents the server's own defaults in package.json",
    async () => {
      const { settings } = await serverStatus();
      const defaults = contributedDefaults();
      // Keys this test's user left alone: the server shows its own defaults for them.
      const untouched = Object.keys(defaults).filter(
        (key) =>
          SERVER_KEYS.includes(key) && !(key in userSettings) && !key.startsWith("tasks.") && key !== "token",
      );
      expect(untouched.length).toBeGreaterThan(8);
      for (const key of untouched) {
        const documented = defaults[key] === "" ? null : defaults[key];
        expect(described(settings, key), `cato.${key}`).toEqual(documented);
      }
    },
    WAIT_MS,
  );

  it(
    "takes the settings as the extension maps them, every contributed default included",
    async () => {
      userSettings = {
        ...contributedDefaults(),
        config: "cato.toml",
        debounceMs: 5,
        "context.maxSnippets": 2,
      };
      const messagesBefore = server.recorded.messages.length;
      const pulls = server.recorded.configurationRequests.length;
      const settings = serverSettings((k) => userSettings[k], undefined, { home: dir, workspaceFolder: dir });
      await server.connection.sendNotification("workspace/didChangeConfiguration", {
        settings: { cato: settings },
      });
      expect(await eventually(() => server.recorded.configurationRequests[pulls], 30_000)).toBeDefined();

      // The server applies what it pulls; ask until the new value shows.
      let status = await serverStatus();
      const deadline = Date.now() + 30_000;
      while (status.settings["debounce_ms"] !== 5 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        status = await serverStatus();
      }
      expect(status.settings["debounce_ms"]).toBe(5);
      const context = status.settings["context"] as Record<string, unknown>;
      expect(context["max_snippets"]).toBe(2);
      expect(status.settings["config"]).toBe(path.join(dir, "cato.toml"));
      const invalid = server.recorded.messages
        .slice(messagesBefore)
        .filter((m) => m.message.includes("settings"));
      expect(invalid).toEqual([]);
    },
    WAIT_MS,
  );
});
