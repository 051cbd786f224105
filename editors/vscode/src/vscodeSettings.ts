/** Reads the `cato` section from VS Code: user-set values only, per resource. */
import * as os from "node:os";
import * as vscode from "vscode";

import {
  configuredCommand,
  type JsonObject,
  type PathContext,
  SECTION,
  serverSettings,
  type SettingReader,
} from "./settings";

/** Where "CATO: Set Token" keeps the bearer token (the OS keychain, not settings.json). */
export const TOKEN_SECRET_KEY = "cato.token";

export function settingReader(scope?: vscode.Uri): SettingReader {
  const config = vscode.workspace.getConfiguration(SECTION, scope);
  return (key) => {
    const found = config.inspect(key);
    return found?.workspaceFolderValue ?? found?.workspaceValue ?? found?.globalValue;
  };
}

export function pathContext(scope?: vscode.Uri): PathContext {
  const folder =
    (scope === undefined ? undefined : vscode.workspace.getWorkspaceFolder(scope)) ??
    vscode.workspace.workspaceFolders?.[0];
  return { home: os.homedir(), workspaceFolder: folder?.uri.fsPath };
}

export async function readServerSettings(
  secrets: vscode.SecretStorage,
  scopeUri?: string,
): Promise<JsonObject> {
  const scope = scopeUri === undefined ? undefined : vscode.Uri.parse(scopeUri);
  const token = await secrets.get(TOKEN_SECRET_KEY);
  return serverSettings(settingReader(scope), token, pathContext(scope));
}

/** The languages the client attaches to (the default: every language). */
export function enabledLanguages(): string[] {
  const value = vscode.workspace.getConfiguration(SECTION).get<unknown>("languages");
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === "string") : ["*"];
}

export function serverCommandSetting(): string[] {
  return configuredCommand(vscode.workspace.getConfiguration(SECTION).get<unknown>("server.command"));
}

/**
 * What `cato.server.command` holds where VS Code did not apply it (e.g. a value in a
 * scope this window ignores), for the "not found" message; undefined when it is unset.
 */
export function serverCommandNote(): string | undefined {
  const found = vscode.workspace.getConfiguration(SECTION).inspect<unknown>("server.command");
  const scopes: [string, unknown][] = [
    ["Folder", found?.workspaceFolderValue],
    ["Workspace", found?.workspaceValue],
    ["User", found?.globalValue],
  ];
  const [scope, value] = scopes.find(([, v]) => configuredCommand(v).length > 0) ?? [];
  return scope === undefined ? undefined : `${JSON.stringify(value)} in ${scope} settings, not applied here`;
}

/** Target languages the user listed for translation (offered first). */
export function translateTargetsSetting(): string[] {
  const value = vscode.workspace.getConfiguration(SECTION).get<unknown>("translateTargets");
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === "string") : [];
}
