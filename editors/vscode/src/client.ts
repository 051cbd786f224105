/**
 * The language client for one `cato-lsp` process: how it is started, which documents
 * it sees, and the `cato` section it is given (mapped, never the raw VS Code section,
 * which holds client-only keys the server would reject).
 */
import type * as vscode from "vscode";
import {
  CloseAction,
  ErrorAction,
  type ErrorHandler,
  LanguageClient,
  type LanguageClientOptions,
  type ServerOptions,
  State,
  type StdioOptions,
  TransportKind,
} from "vscode-languageclient/node";

import { answerConfiguration, documentSelector, type SettingsProvider } from "./clientOptions";
import type { ServerCommand } from "./discovery";
import type { JsonObject } from "./settings";

export const CLIENT_ID = "cato";
export const CLIENT_NAME = "CATO";

export function serverOptions(server: ServerCommand): ServerOptions {
  return {
    command: server.command,
    args: [...server.args],
    transport: TransportKind.stdio,
    options: { env: { ...process.env, PYTHONUNBUFFERED: "1" } },
  };
}

export interface ClientParts {
  readonly server: ServerCommand;
  readonly languages: readonly string[];
  readonly initializationOptions: JsonObject;
  readonly settings: SettingsProvider;
  readonly output: vscode.LogOutputChannel;
  /** How the server's stdout and stderr reach the output (the client's default if absent). */
  readonly stdio?: Required<StdioOptions>;
}

/**
 * A server that fails while it starts is reported once, by whoever awaits `start()`
 * (the controller names the last line the server printed), and not restarted: the
 * client's own handling would retry it and stack generic notifications ("connection to
 * server is erroring", "Server initialization failed") over that one. Once the server
 * runs, a crash gets the client's usual handling (restarts, then a message).
 */
export function quietWhileStarting(running: () => LanguageClient | undefined): ErrorHandler {
  let usual: ErrorHandler | undefined;
  const started = (): ErrorHandler | undefined => {
    const client = running();
    if (client?.state !== State.Running) {
      return undefined;
    }
    usual ??= client.createDefaultErrorHandler();
    return usual;
  };
  return {
    error: (error, message, count) =>
      started()?.error(error, message, count) ?? { action: ErrorAction.Shutdown, handled: true },
    closed: () => started()?.closed() ?? { action: CloseAction.DoNotRestart, handled: true },
  };
}

export function createClient(parts: ClientParts): LanguageClient {
  let client: LanguageClient | undefined;
  const options: LanguageClientOptions = {
    errorHandler: quietWhileStarting(() => client),
    initializationFailedHandler: () => false, // reported by the caller of start(); not retried
    documentSelector: documentSelector(parts.languages),
    initializationOptions: parts.initializationOptions,
    outputChannel: parts.output,
    ...(parts.stdio === undefined ? {} : { stdioOptions: parts.stdio }),
    middleware: {
      workspace: {
        configuration: (params, token, next) =>
          answerConfiguration(params, parts.settings, async () => {
            const result = await next(params, token);
            return Array.isArray(result) ? result : [];
          }),
      },
    },
  };
  client = new LanguageClient(CLIENT_ID, CLIENT_NAME, serverOptions(parts.server), options);
  return client;
}
