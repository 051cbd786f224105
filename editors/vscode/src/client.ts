/**
 * The language client for one `cato-lsp` process: how it is started, which documents
 * it sees, and the `cato` section it is given (mapped, never the raw VS Code section,
 * which holds client-only keys the server would reject).
 */
import type * as vscode from "vscode";
import {
  LanguageClient,
  type LanguageClientOptions,
  type ServerOptions,
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
}

export function createClient(parts: ClientParts): LanguageClient {
  const options: LanguageClientOptions = {
    documentSelector: documentSelector(parts.languages),
    initializationOptions: parts.initializationOptions,
    outputChannel: parts.output,
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
  return new LanguageClient(CLIENT_ID, CLIENT_NAME, serverOptions(parts.server), options);
}
