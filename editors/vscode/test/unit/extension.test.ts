/**
 * Activation and the palette commands, with the language client replaced by a fake
 * that records what the extension asks of it (the real client needs a running VS Code).
 */
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { Readable } from "node:stream";

import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type * as vscode from "vscode";

import { mock, Position, Selection, Uri, window } from "../mocks/vscode";

type Handler = (params: unknown) => unknown;

interface FakeClientShape {
  id: string;
  serverOptions: { command: string; args: string[] };
  clientOptions: {
    documentSelector: unknown;
    initializationOptions: Record<string, unknown>;
    middleware: {
      workspace: {
        configuration: (
          params: unknown,
          token: unknown,
          next: (p: unknown, t: unknown) => unknown,
        ) => Promise<unknown>;
      };
    };
  };
  notifications: Map<string, Handler>;
  requests: { method: string; params: unknown }[];
  sent: { method: string; params: unknown }[];
  requestHandlers: string[];
  running: boolean;
  disposed: boolean;
}

const fake = vi.hoisted(() => ({
  instances: [] as unknown[],
  answer: (_params: { command: string }): unknown => ({ applied: true }),
  /** The next start writes `stderr` (as a server that exits at once) and rejects. */
  startFailure: undefined as { stderr: string; error: Error } | undefined,
}));

vi.mock("vscode-languageclient/node", () => {
  class LanguageClient {
    notifications = new Map<string, Handler>();
    requests: { method: string; params: unknown }[] = [];
    sent: { method: string; params: unknown }[] = [];
    requestHandlers: string[] = [];
    running = false;
    disposed = false;
    code2ProtocolConverter = { asUri: (uri: { toString(): string }) => uri.toString() };
    constructor(
      readonly id: string,
      readonly name: string,
      readonly serverOptions: unknown,
      readonly clientOptions: unknown,
    ) {
      fake.instances.push(this);
    }
    onNotification(method: string, handler: Handler) {
      this.notifications.set(method, handler);
      return { dispose: () => this.notifications.delete(method) };
    }
    onDidChangeState() {
      return { dispose: () => undefined };
    }
    onRequest(type: { method: string }) {
      this.requestHandlers.push(type.method);
      return { dispose: () => undefined };
    }
    onProgress() {
      return { dispose: () => undefined };
    }
    start() {
      const failure = fake.startFailure;
      if (failure !== undefined) {
        // the server's stderr, handed to the client's stdio options as vscode-languageclient does
        const options = this.clientOptions as {
          outputChannel: unknown;
          stdioOptions: { stderr(input: unknown, output: unknown): void };
        };
        options.stdioOptions.stderr(Readable.from([failure.stderr]), options.outputChannel);
        return Promise.reject(failure.error);
      }
      this.running = true;
      return Promise.resolve();
    }
    stop() {
      this.running = false;
      return Promise.resolve();
    }
    dispose() {
      this.disposed = true;
      return Promise.resolve();
    }
    isRunning() {
      return this.running;
    }
    get state() {
      return this.running ? 2 : 3; // Running, else Starting
    }
    createDefaultErrorHandler() {
      // as the client's own: restart a crashed server
      return { error: () => ({ action: 1 }), closed: () => ({ action: 2 }) };
    }
    needsStop() {
      return this.running;
    }
    sendRequest(type: { method: string }, params: { command: string }) {
      this.requests.push({ method: type.method, params });
      return Promise.resolve(fake.answer(params));
    }
    sendNotification(type: { method: string }, params: unknown) {
      this.sent.push({ method: type.method, params });
      return Promise.resolve();
    }
  }
  return {
    LanguageClient,
    TransportKind: { stdio: 0 },
    State: { Stopped: 1, Running: 2, Starting: 3 },
    ErrorAction: { Continue: 1, Shutdown: 2 },
    CloseAction: { DoNotRestart: 1, Restart: 2 },
    ExecuteCommandRequest: { type: { method: "workspace/executeCommand" } },
    DidChangeConfigurationNotification: { type: { method: "workspace/didChangeConfiguration" } },
  };
});

const { activate, deactivate } = await import("../../src/extension");

interface Manifest {
  contributes: { commands: { command: string }[] };
}
const manifest = JSON.parse(
  readFileSync(path.join(__dirname, "..", "..", "package.json"), "utf8"),
) as Manifest;

class Secrets {
  readonly values = new Map<string, string>();
  private listeners: (() => void)[] = [];
  get(key: string): Promise<string | undefined> {
    return Promise.resolve(this.values.get(key));
  }
  store(key: string, value: string): Promise<void> {
    this.values.set(key, value);
    this.listeners.forEach((l) => l());
    return Promise.resolve();
  }
  delete(key: string): Promise<void> {
    this.values.delete(key);
    this.listeners.forEach((l) => l());
    return Promise.resolve();
  }
  onDidChange(listener: () => void) {
    this.listeners.push(listener);
    return { dispose: () => undefined };
  }
}

class Memento {
  private readonly values = new Map<string, unknown>();
  get<T>(key: string, fallback?: T): T {
    return (this.values.has(key) ? this.values.get(key) : fallback) as T;
  }
  update(key: string, value: unknown): Promise<void> {
    this.values.set(key, value);
    return Promise.resolve();
  }
  keys(): string[] {
    return [...this.values.keys()];
  }
}

function extensionContext(): {
  context: vscode.ExtensionContext;
  secrets: Secrets;
  subscriptions: { dispose(): void }[];
} {
  const secrets = new Secrets();
  const subscriptions: { dispose(): void }[] = [];
  const context = {
    subscriptions,
    secrets,
    globalState: new Memento(),
  } as unknown as vscode.ExtensionContext;
  return { context, secrets, subscriptions };
}

function clients(): FakeClientShape[] {
  return fake.instances as FakeClientShape[];
}

function lastClient(): FakeClientShape {
  const client = clients().at(-1);
  if (client === undefined) {
    throw new Error("no language client was created");
  }
  return client;
}

async function run(command: string, ...args: unknown[]): Promise<void> {
  const handler = mock.commands.get(command);
  if (handler === undefined) {
    throw new Error(`command ${command} is not registered`);
  }
  await handler(...args);
}

/** Lets queued promise callbacks (fire-and-forget work) run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i += 1) {
    await new Promise((resolve) => setImmediate(resolve));
  }
}

describe("activation", () => {
  let subscriptions: { dispose(): void }[] = [];

  beforeEach(() => {
    mock.reset();
    fake.instances.length = 0;
    fake.answer = () => ({ applied: true });
    // Any executable file will do: the fake client never runs it.
    mock.settings.global["cato.server.command"] = [process.execPath, "--flag"];
    mock.settings.global["cato.debounceMs"] = 40;
    mock.settings.global["cato.trace.server"] = "verbose";
    mock.defaults["cato.languages"] = ["*"];
  });

  afterEach(async () => {
    await deactivate();
    subscriptions.forEach((s) => s.dispose());
    subscriptions = [];
  });

  async function activated(): Promise<{ secrets: Secrets }> {
    const ctx = extensionContext();
    subscriptions = ctx.subscriptions;
    // Activation does not wait for the server; the controller's start() does.
    await activate(ctx.context).start();
    return { secrets: ctx.secrets };
  }

  it("registers exactly the contributed commands and starts the configured server", async () => {
    await activated();
    const contributed = manifest.contributes.commands.map((c) => c.command).sort();
    expect([...mock.commands.keys()].sort()).toEqual(contributed);
    // The server's own command ids stay free for the language client to register.
    expect(
      contributed.filter((c) => /^cato\.(summarize|generate|translateFile|status|accept)$/.test(c)),
    ).toEqual([]);
    const client = lastClient();
    expect(client.running).toBe(true);
    expect(client.serverOptions).toMatchObject({ command: process.execPath, args: ["--flag"] });
    expect(client.clientOptions.documentSelector).toEqual([{ scheme: "file" }, { scheme: "untitled" }]);
    expect(client.clientOptions.initializationOptions).toEqual({ debounceMs: 40 });
  });

  it("feeds the status bar from cato/status notifications", async () => {
    await activated();
    // the server starts its replicas at initialize: "starting" until it says otherwise
    expect(mock.statusItems[0]?.text).toBe("$(sync~spin) CATO");
    expect(mock.statusItems[0]?.tooltip).toContain("(starting)");
    // its long tasks show as notifications with Cancel, not the client's spinner
    expect(lastClient().requestHandlers).toContain("window/workDoneProgress/create");
    lastClient().notifications.get("cato/status")?.({ state: "ready", replicasReady: 1, replicasTotal: 1 });
    expect(mock.statusItems[0]?.text).toBe("$(sparkle) CATO 1/1");
  });

  it("answers workspace/configuration with the mapped section, asking VS Code for the others", async () => {
    await activated();
    const next = vi.fn(() => [{ fontSize: 12 }, { raw: true }]);
    const answer = await lastClient().clientOptions.middleware.workspace.configuration(
      { items: [{ section: "editor" }, { section: "cato" }] },
      undefined,
      next,
    );
    expect(answer).toEqual([{ fontSize: 12 }, { debounceMs: 40 }]);
    expect(next).toHaveBeenCalledTimes(1);
  });

  it("pushes changed settings, and restarts the server when its command or languages change", async () => {
    await activated();
    const first = lastClient();
    mock.settings.global["cato.debounceMs"] = 10;
    mock.configurationChanged.fire({ affectsConfiguration: (s) => s === "cato" || s === "cato.debounceMs" });
    await settle();
    expect(first.sent).toEqual([
      { method: "workspace/didChangeConfiguration", params: { settings: { cato: { debounceMs: 10 } } } },
    ]);
    expect(clients().length).toBe(1);

    mock.settings.global["cato.languages"] = ["python"];
    mock.configurationChanged.fire({ affectsConfiguration: (s) => s === "cato" || s === "cato.languages" });
    await vi.waitFor(() => {
      expect(clients().length).toBe(2);
      expect(lastClient().running).toBe(true);
    });
    expect(first.running).toBe(false);
    expect(first.disposed).toBe(true);
    expect(lastClient().clientOptions.documentSelector).toEqual([
      { scheme: "file", language: "python" },
      { scheme: "untitled", language: "python" },
    ]);
  });

  it("restarts the server when a setting it was started with is removed", async () => {
    mock.settings.global["cato.token"] = "old-token";
    await activated();
    const first = lastClient();
    expect(first.clientOptions.initializationOptions).toMatchObject({ token: "old-token" });
    delete mock.settings.global["cato.token"];
    mock.configurationChanged.fire({ affectsConfiguration: (s) => s === "cato" || s === "cato.token" });
    await vi.waitFor(() => {
      expect(clients().length).toBe(2);
      expect(lastClient().running).toBe(true);
    });
    expect(first.sent).toEqual([]);
    expect(lastClient().clientOptions.initializationOptions).toEqual({ debounceMs: 40 });
  });

  it("replaces a client that gave up when a command needs the server", async () => {
    await activated();
    const crashed = lastClient();
    crashed.running = false; // what vscode-languageclient does after repeated crashes
    fake.answer = () => ({ state: "idle" });
    await run("cato.editor.showStatus");
    expect(clients().length).toBe(2);
    expect(crashed.disposed).toBe(true);
    expect(lastClient().requests[0]?.params).toEqual({ command: "cato.status", arguments: [] });
  });

  it("Summarize sends the cursor and selection of the active editor", async () => {
    await activated();
    const uri = Uri.file("/w/a.py");
    window.activeTextEditor = {
      document: { uri, languageId: "python" },
      selection: new Selection(new Position(4, 2), new Position(2, 0)),
    };
    await run("cato.editor.summarize");
    expect(lastClient().requests).toEqual([
      {
        method: "workspace/executeCommand",
        params: {
          command: "cato.summarize",
          arguments: [
            {
              uri: uri.toString(),
              range: { start: { line: 2, character: 0 }, end: { line: 4, character: 2 } },
              position: { line: 2, character: 0 },
            },
          ],
        },
      },
    ]);
  });

  it("Translate File asks for the target, runs cato.translateFile and tells about a cancellation", async () => {
    await activated();
    const uri = Uri.file("/w/stats.py");
    mock.documents.set(uri.toString(), { uri, languageId: "python" });
    mock.quickPickAnswer = (items) => items.find((i) => (i as { language: string }).language === "rust");
    fake.answer = () => ({ cancelled: true, applied: false });
    await run("cato.editor.translateFile", uri);
    expect(lastClient().requests[0]?.params).toEqual({
      command: "cato.translateFile",
      arguments: [{ uri: uri.toString(), targetLanguage: "rust" }],
    });
    expect(mock.messages).toContainEqual({
      level: "info",
      text: "CATO: the translation was cancelled.",
      items: [],
    });
  });

  it("shows a server error from a command instead of throwing", async () => {
    await activated();
    window.activeTextEditor = {
      document: { uri: Uri.file("/w/a.py"), languageId: "python" },
      selection: new Selection(new Position(0, 0), new Position(0, 0)),
    };
    fake.answer = () => {
      throw new Error("the orchestrator has no replica available");
    };
    await run("cato.editor.generate");
    expect(mock.messages.at(-1)).toMatchObject({
      level: "error",
      text: "CATO: the orchestrator has no replica available",
    });
    // a user mistake (InvalidParams) is a warning, and the output has one line for it
    fake.answer = () => {
      throw Object.assign(new Error("nothing to generate from: no comment or docstring at the cursor"), {
        code: -32602,
      });
    };
    await run("cato.editor.generate");
    expect(mock.messages.at(-1)).toMatchObject({
      level: "warning",
      text: "CATO: nothing to generate from: no comment or docstring at the cursor",
    });
    expect(mock.outputs[0]?.lines.at(-1)).toBe(
      "[warn] cato.editor.generate: nothing to generate from: no comment or docstring at the cursor",
    );
  });

  it("Show Status runs cato.status and writes the report to the output", async () => {
    await activated();
    fake.answer = () => ({ state: "ready", replicasReady: 2, replicasTotal: 2, backend: "embedded" });
    await run("cato.editor.showStatus");
    expect(lastClient().requests[0]?.params).toEqual({ command: "cato.status", arguments: [] });
    expect(mock.statusItems[0]?.text).toBe("$(sparkle) CATO 2/2");
    expect(mock.outputs[0]?.lines.join("\n")).toContain("Backend: embedded");
  });

  it("Set Token keeps the token in secret storage and sends it, not the plain setting", async () => {
    mock.settings.global["cato.token"] = "plain-text-token";
    const { secrets } = await activated();
    mock.inputBoxAnswer = "keychain-token";
    await run("cato.editor.setToken");
    await settle();
    expect(secrets.values.get("cato.token")).toBe("keychain-token");
    const pushed = lastClient().sent.at(-1)?.params as { settings: { cato: Record<string, unknown> } };
    expect(pushed.settings.cato["token"]).toBe("keychain-token");
  });
});

describe("a server that exits as it starts", () => {
  beforeEach(() => {
    mock.reset();
    fake.instances.length = 0;
  });

  afterEach(async () => {
    fake.startFailure = undefined;
    await deactivate();
  });

  it("shows the last line it printed, and offers its output", async () => {
    mock.settings.global["cato.server.command"] = [process.execPath];
    fake.startFailure = {
      stderr: [
        "Traceback (most recent call last):",
        '  File "/venv/bin/cato-lsp", line 5, in <module>',
        "ModuleNotFoundError: No module named 'pygls'",
        "",
      ].join("\n"),
      error: new Error("Connection to server got closed. Server will not be restarted."),
    };
    mock.messageAnswer = "Show Output";
    const ctx = extensionContext();
    expect(await activate(ctx.context).start()).toBeUndefined();
    const error = mock.messages.find((m) => m.level === "error");
    expect(error?.text).toBe(
      "CATO: the language server did not start: ModuleNotFoundError: No module named 'pygls'",
    );
    expect(error?.items).toEqual(["Show Output"]);
    const output = mock.outputs[0];
    await vi.waitFor(() => expect(output?.shown).toBe(true));
    // the server's stderr still reaches the output channel, whole
    expect(output?.lines).toContain('[error]   File "/venv/bin/cato-lsp", line 5, in <module>');
    expect(mock.statusItems[0]?.text).toBe("$(error) CATO stopped");
    ctx.subscriptions.forEach((s) => s.dispose());
  });

  it("is not restarted or reported by the client while it starts; a crash later is", async () => {
    type Handler = { closed(): { action: number; handled?: boolean } };
    mock.settings.global["cato.server.command"] = [process.execPath];
    const ctx = extensionContext();
    await activate(ctx.context).start();
    const client = lastClient() as unknown as { clientOptions: { errorHandler: Handler }; running: boolean };
    const handler = client.clientOptions.errorHandler;
    client.running = false; // starting
    expect(handler.closed()).toEqual({ action: 1, handled: true }); // DoNotRestart, quietly
    client.running = true; // running: the client's own handling
    expect(handler.closed()).toEqual({ action: 2 }); // Restart
    ctx.subscriptions.forEach((s) => s.dispose());
  });

  it("says what the client saw when the server printed nothing", async () => {
    mock.settings.global["cato.server.command"] = [process.execPath];
    fake.startFailure = { stderr: "", error: new Error("spawn EACCES") };
    const ctx = extensionContext();
    expect(await activate(ctx.context).start()).toBeUndefined();
    const error = mock.messages.find((m) => m.level === "error");
    expect(error?.text).toBe("CATO: the language server did not start: Error: spawn EACCES");
    ctx.subscriptions.forEach((s) => s.dispose());
  });
});

describe("a missing server", () => {
  beforeEach(() => {
    mock.reset();
    fake.instances.length = 0;
  });

  afterEach(async () => {
    await deactivate();
  });

  it("says how to install it on any Python (pipx), and offers to copy that", async () => {
    mock.settings.global["cato.server.command"] = ["/nonexistent/bin/cato-lsp"];
    mock.extensions.set("ms-python.python", {
      isActive: true,
      exports: { environments: { getActiveEnvironmentPath: () => ({ path: "/venv/bin/python" }) } },
    });
    mock.messageAnswer = "Copy Install Command";
    const ctx = extensionContext();
    expect(await activate(ctx.context).start()).toBeUndefined();
    await vi.waitFor(() => expect(mock.clipboard).not.toBe(""));
    expect(clients()).toEqual([]);
    const error = mock.messages.find((m) => m.level === "error");
    expect(error?.text).toContain("pipx install <a CATO checkout or cato_assistant wheel>");
    expect(error?.text).toContain("scripts/install");
    expect(error?.items).toContain("Copy Install Command");
    expect(mock.clipboard).toBe("pipx install <a CATO checkout or cato_assistant wheel>");
    expect(mock.statusItems[0]?.text).toBe("$(error) CATO stopped");
    ctx.subscriptions.forEach((s) => s.dispose());
  });
});
