/**
 * A headless LSP client for the real `cato-lsp`: spawns `python -m cato_lsp`, speaks
 * JSON-RPC over its stdio, and plays VS Code's part for the server's requests
 * (configuration through the extension's own mapping, applyEdit on disk, progress,
 * showDocument), recording what it was sent.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import * as path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

import {
  ApplyWorkspaceEditRequest,
  type ApplyWorkspaceEditResult,
  ConfigurationRequest,
  createProtocolConnection,
  type CreateFile,
  type InitializeResult,
  type ProtocolConnection,
  ShowDocumentRequest,
  StreamMessageReader,
  StreamMessageWriter,
  type TextDocumentEdit,
  type TextEdit,
  type WorkspaceEdit,
  WorkDoneProgressCreateRequest,
} from "vscode-languageserver-protocol/node";

import { answerConfiguration, type SettingsProvider } from "../../src/clientOptions";

export interface Recorded {
  readonly edits: WorkspaceEdit[];
  readonly shown: string[];
  readonly messages: { type: number; message: string }[];
  readonly logs: string[];
  readonly statuses: unknown[];
  readonly progress: { token: string | number; kind: string; percentage?: number }[];
  readonly configurationRequests: number[];
}

export interface StartOptions {
  readonly python: string;
  readonly cwd: string;
  readonly settings: SettingsProvider;
  readonly initializationOptions: object;
}

/** How long vscode-languageclient waits after `exit` before it ends the process itself. */
const EXIT_WAIT_MS = 2_000;

/** Capabilities close to what VS Code with vscode-languageclient 10+ declares. */
const CAPABILITIES = {
  general: { positionEncodings: ["utf-16"] },
  textDocument: {
    synchronization: { dynamicRegistration: true, didSave: true },
    inlineCompletion: { dynamicRegistration: true },
    codeAction: { dynamicRegistration: true },
  },
  workspace: {
    applyEdit: true,
    configuration: true,
    didChangeConfiguration: { dynamicRegistration: true },
    executeCommand: { dynamicRegistration: true },
    workspaceEdit: { documentChanges: true, resourceOperations: ["create", "rename", "delete"] },
  },
  window: { workDoneProgress: true, showDocument: { support: true }, showMessage: {} },
};

export class LspServer {
  readonly recorded: Recorded = {
    edits: [],
    shown: [],
    messages: [],
    logs: [],
    statuses: [],
    progress: [],
    configurationRequests: [],
  };
  readonly stderr: string[] = [];
  private exited: Promise<number | null>;

  private constructor(
    readonly proc: ChildProcess,
    readonly connection: ProtocolConnection,
    private readonly options: StartOptions,
  ) {
    this.exited = new Promise((resolve) => proc.once("exit", (code) => resolve(code)));
    proc.stderr?.on("data", (chunk: Buffer) => this.stderr.push(chunk.toString("utf8")));
    this.handleServerRequests();
    connection.listen();
  }

  static start(options: StartOptions): LspServer {
    // Its own process group: whatever the server starts can be found and stopped.
    const proc = spawn(options.python, ["-m", "cato_lsp"], {
      cwd: options.cwd,
      stdio: ["pipe", "pipe", "pipe"],
      detached: true,
      env: { ...process.env, PYTHONUNBUFFERED: "1" },
    });
    if (proc.stdout === null || proc.stdin === null) {
      throw new Error("no stdio pipes to the server");
    }
    const connection = createProtocolConnection(
      new StreamMessageReader(proc.stdout),
      new StreamMessageWriter(proc.stdin),
    );
    return new LspServer(proc, connection, options);
  }

  async initialize(rootDir: string): Promise<InitializeResult> {
    const rootUri = pathToFileURL(rootDir).toString();
    const result = await this.connection.sendRequest("initialize", {
      processId: process.pid,
      clientInfo: { name: "cato-vscode-integration-test" },
      rootUri,
      workspaceFolders: [{ uri: rootUri, name: path.basename(rootDir) }],
      capabilities: CAPABILITIES,
      initializationOptions: this.options.initializationOptions,
    });
    await this.connection.sendNotification("initialized", {});
    return result as InitializeResult;
  }

  open(uri: string, languageId: string, text: string): Promise<void> {
    return this.connection.sendNotification("textDocument/didOpen", {
      textDocument: { uri, languageId, version: 1, text },
    });
  }

  executeCommand(command: string, args: unknown[]): Promise<unknown> {
    return this.connection.sendRequest("workspace/executeCommand", { command, arguments: args });
  }

  /**
   * Stops the server as vscode-languageclient does: `shutdown`, `exit`, a short wait,
   * then the end of its stdin. `graceful`: it exited by itself (no signal needed);
   * `exitedOnExit`: the `exit` notification alone was enough. Whatever is left of its
   * process group afterwards is killed.
   */
  async stop(graceMs: number): Promise<{ graceful: boolean; exitedOnExit: boolean }> {
    let exitedOnExit = false;
    let graceful = false;
    try {
      await withTimeout(this.connection.sendRequest("shutdown"), graceMs);
      await this.connection.sendNotification("exit");
      exitedOnExit = (await withTimeout(this.exited, EXIT_WAIT_MS)) !== undefined;
      if (!exitedOnExit) {
        this.proc.stdin?.end();
      }
      graceful = exitedOnExit || (await withTimeout(this.exited, graceMs)) !== undefined;
    } catch {
      graceful = false;
    }
    this.connection.dispose();
    killGroup(this.proc.pid);
    return { graceful, exitedOnExit };
  }

  private handleServerRequests(): void {
    const c = this.connection;
    const r = this.recorded;
    c.onRequest(ConfigurationRequest.type, (params) => {
      r.configurationRequests.push(Date.now());
      return answerConfiguration(params, this.options.settings, () => Promise.resolve([]));
    });
    c.onRequest(WorkDoneProgressCreateRequest.type, () => undefined);
    c.onRequest("client/registerCapability", () => null);
    c.onRequest("client/unregisterCapability", () => null);
    c.onRequest(ShowDocumentRequest.type, (params) => {
      r.shown.push(params.uri);
      return { success: true };
    });
    c.onRequest(ApplyWorkspaceEditRequest.type, async (params): Promise<ApplyWorkspaceEditResult> => {
      r.edits.push(params.edit);
      try {
        await applyToDisk(params.edit);
        return { applied: true };
      } catch (error) {
        return { applied: false, failureReason: String(error) };
      }
    });
    c.onNotification("window/showMessage", (params: { type: number; message: string }) => {
      r.messages.push(params);
    });
    c.onNotification("window/logMessage", (params: { message: string }) => {
      r.logs.push(params.message);
    });
    c.onNotification("cato/status", (params: unknown) => {
      r.statuses.push(params);
    });
    c.onNotification(
      "$/progress",
      (params: { token: string | number; value: { kind: string; percentage?: number } }) => {
        const entry = { token: params.token, kind: params.value.kind };
        r.progress.push(
          params.value.percentage === undefined ? entry : { ...entry, percentage: params.value.percentage },
        );
      },
    );
  }
}

/** Applies a workspace edit the way VS Code would: file operations, then text edits. */
export async function applyToDisk(edit: WorkspaceEdit): Promise<void> {
  for (const change of edit.documentChanges ?? []) {
    if ("kind" in change) {
      if (change.kind !== "create") {
        throw new Error(`unsupported resource operation ${change.kind}`);
      }
      await createFile(change);
    } else {
      await editFile(change);
    }
  }
  for (const [uri, edits] of Object.entries(edit.changes ?? {})) {
    await applyEdits(fileURLToPath(uri), edits);
  }
}

async function createFile(op: CreateFile): Promise<void> {
  const file = fileURLToPath(op.uri);
  if (existsSync(file) && op.options?.overwrite !== true) {
    if (op.options?.ignoreIfExists === true) {
      return;
    }
    throw new Error(`${file} exists`);
  }
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, "");
}

async function editFile(change: TextDocumentEdit): Promise<void> {
  const edits = change.edits.filter((e): e is TextEdit => "range" in e && "newText" in e);
  await applyEdits(fileURLToPath(change.textDocument.uri), edits);
}

async function applyEdits(file: string, edits: readonly TextEdit[]): Promise<void> {
  let text = await readFile(file, "utf8");
  const sorted = [...edits].sort(
    (a, b) => b.range.start.line - a.range.start.line || b.range.start.character - a.range.start.character,
  );
  for (const e of sorted) {
    const start = offsetAt(text, e.range.start.line, e.range.start.character);
    const end = offsetAt(text, e.range.end.line, e.range.end.character);
    text = text.slice(0, start) + e.newText + text.slice(end);
  }
  await writeFile(file, text);
}

/** A UTF-16 offset (JavaScript's own string units) from an LSP position. */
export function offsetAt(text: string, line: number, character: number): number {
  let offset = 0;
  for (let current = 0; current < line; current += 1) {
    const next = text.indexOf("\n", offset);
    if (next === -1) {
      return text.length;
    }
    offset = next + 1;
  }
  const lineEnd = text.indexOf("\n", offset);
  return Math.min(offset + character, lineEnd === -1 ? text.length : lineEnd);
}

export function groupAlive(pid: number | undefined): boolean {
  if (pid === undefined) {
    return false;
  }
  try {
    process.kill(-pid, 0);
    return true;
  } catch {
    return false;
  }
}

function killGroup(pid: number | undefined): void {
  if (pid !== undefined && groupAlive(pid)) {
    try {
      process.kill(-pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

export async function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `check` until it returns a value (not undefined) or `ms` pass. */
export async function eventually<T>(
  check: () => T | undefined,
  ms: number,
  stepMs = 50,
): Promise<T | undefined> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = check();
    if (value !== undefined || Date.now() > deadline) {
      return value;
    }
    await new Promise((resolve) => setTimeout(resolve, stepMs));
  }
}
