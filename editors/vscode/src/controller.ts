/**
 * Owns the running language client: finds `cato-lsp`, starts and restarts it, keeps
 * the server's settings in sync, feeds the status bar, and runs server commands.
 */
import * as os from "node:os";

import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  ExecuteCommandRequest,
  type LanguageClient,
  State,
} from "vscode-languageclient/node";

import { createClient } from "./client";
import { STATUS_NOTIFICATION } from "./commandIds";
import { type Discovery, discoverServer, type Probes } from "./discovery";
import { nodeProbes } from "./probes";
import { notifyProgress, type ProgressClient } from "./progress";
import { pythonInterpreter } from "./python";
import { ServerTail } from "./serverLog";
import { type JsonObject, removedKeys, SECTION } from "./settings";
import { StatusBar } from "./statusBar";
import {
  enabledLanguages,
  readServerSettings,
  serverCommandNote,
  serverCommandSetting,
} from "./vscodeSettings";

const COPY_INSTALL = "Copy Install Command";
const OPEN_SETTINGS = "Open Settings";
const SHOW_OUTPUT = "Show Output";

export class CatoController implements vscode.Disposable {
  readonly output: vscode.LogOutputChannel;
  readonly statusBar: StatusBar;
  private client: LanguageClient | undefined;
  private pending: Promise<LanguageClient | undefined> | undefined;
  /** The initialization options of the running server. */
  private startedWith: JsonObject = {};

  constructor(
    private readonly secrets: vscode.SecretStorage,
    private readonly probes: Probes = nodeProbes(),
  ) {
    this.output = vscode.window.createOutputChannel("CATO", { log: true });
    this.statusBar = new StatusBar();
  }

  /** The running client, starting it if needed; undefined when the server cannot start. */
  start(): Promise<LanguageClient | undefined> {
    if (this.client?.isRunning() === true) {
      return Promise.resolve(this.client);
    }
    // A client that gave up (the server kept crashing) is replaced by a fresh one.
    this.pending ??= this.stop()
      .then(() => this.launch())
      .finally(() => {
        this.pending = undefined;
      });
    return this.pending;
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (client === undefined) {
      return;
    }
    try {
      if (client.needsStop()) {
        await client.stop();
      }
    } catch (error) {
      this.output.warn(`stopping the server: ${String(error)}`);
    }
    await client.dispose().catch(() => undefined);
  }

  async restart(): Promise<LanguageClient | undefined> {
    await this.pending;
    await this.stop();
    return this.start();
  }

  settings(scopeUri?: string): Promise<JsonObject> {
    return readServerSettings(this.secrets, scopeUri);
  }

  /**
   * Tells the running server the settings changed (it re-reads the `cato` section), or
   * restarts it when a setting it was started with has been removed.
   */
  async pushSettings(): Promise<void> {
    const client = this.client;
    if (client?.isRunning() !== true) {
      return;
    }
    const settings = await this.settings();
    const removed = removedKeys(this.startedWith, settings);
    if (removed.length > 0) {
      this.output.info(`restarting the server: ${removed.map((k) => `cato.${k}`).join(", ")} removed`);
      await this.restart();
      return;
    }
    await client.sendNotification(DidChangeConfigurationNotification.type, {
      settings: { [SECTION]: settings },
    });
  }

  /** `workspace/executeCommand` on the server; rejects when it is not running. */
  async execute(command: string, args: unknown[]): Promise<unknown> {
    const client = await this.start();
    if (client === undefined) {
      throw new Error("the CATO language server is not running (see the CATO output)");
    }
    return client.sendRequest(ExecuteCommandRequest.type, { command, arguments: args });
  }

  /** How the client writes URIs, so that arguments match the documents the server has. */
  async protocolUri(uri: vscode.Uri): Promise<string> {
    const client = await this.start();
    return client === undefined ? uri.toString() : client.code2ProtocolConverter.asUri(uri);
  }

  private async launch(): Promise<LanguageClient | undefined> {
    this.statusBar.update({ state: "starting" });
    const interpreter = await pythonInterpreter(vscode.window.activeTextEditor?.document.uri);
    const found = await discoverServer(
      {
        configured: serverCommandSetting(),
        configuredNote: serverCommandNote(),
        interpreter,
        platform: process.platform,
        workspaceFolders: (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.fsPath),
        workspaceTrusted: vscode.workspace.isTrusted,
        home: os.homedir(),
        pipxBinDir: process.env["PIPX_BIN_DIR"],
      },
      this.probes,
    );
    if (!found.found) {
      this.reportMissing(found);
      return undefined;
    }
    const { command, args, source } = found.server;
    this.output.info(`starting ${[command, ...args].join(" ")} (found via ${source})`);
    this.startedWith = await this.settings();
    const stderr = new ServerTail();
    const client = createClient({
      server: found.server,
      languages: enabledLanguages(),
      initializationOptions: this.startedWith,
      settings: (scopeUri) => this.settings(scopeUri),
      output: this.output,
      stdio: stderr.stdioOptions(),
    });
    let heard = false;
    client.onNotification(STATUS_NOTIFICATION, (params: unknown) => {
      heard = true;
      this.statusBar.update(params);
    });
    client.onDidChangeState((event) => {
      if (event.newState === State.Stopped) {
        this.statusBar.stopped("the language server stopped");
      }
    });
    try {
      await client.start();
    } catch (error) {
      this.output.error(`the language server did not start: ${String(error)}`);
      // What the server printed last says why (a traceback's last line, a usage error).
      const cause = (await stderr.lastLine()) ?? String(error);
      this.statusBar.stopped(cause);
      void vscode.window
        .showErrorMessage(`CATO: the language server did not start: ${cause}`, SHOW_OUTPUT)
        .then((choice) => {
          if (choice === SHOW_OUTPUT) {
            this.output.show();
          }
        });
      await client.dispose().catch(() => undefined);
      return undefined;
    }
    // Long tasks as a notification with Cancel (the client's own is a status-bar spinner).
    notifyProgress(client as unknown as ProgressClient);
    this.client = client;
    if (!heard) {
      // The server starts its replicas now and says "starting" until they are ready.
      this.statusBar.update({ state: "starting" });
    }
    return client;
  }

  private reportMissing(found: Extract<Discovery, { found: false }>): void {
    this.output.error(found.message);
    this.statusBar.stopped("cato-lsp not found");
    void vscode.window
      .showErrorMessage(found.message, COPY_INSTALL, OPEN_SETTINGS, SHOW_OUTPUT)
      .then(async (choice) => {
        if (choice === COPY_INSTALL) {
          await vscode.env.clipboard.writeText(found.installCommand);
        } else if (choice === OPEN_SETTINGS) {
          await vscode.commands.executeCommand("workbench.action.openSettings", "@id:cato.server.command");
        } else if (choice === SHOW_OUTPUT) {
          this.output.show();
        }
      });
  }

  dispose(): void {
    void this.stop();
    this.statusBar.dispose();
    this.output.dispose();
  }
}
