/**
 * The palette commands. Each gathers what its server command needs (the document, the
 * cursor or selection, a target language) and runs it; the server does the work,
 * reports progress and applies the edits.
 */
import * as vscode from "vscode";

import {
  GENERATE_COMMAND,
  RESTART_COMMAND,
  SERVER_COMMANDS,
  SET_TOKEN_COMMAND,
  SHOW_OUTPUT_COMMAND,
  SHOW_STATUS_COMMAND,
  SUMMARIZE_COMMAND,
  TRANSLATE_FILE_COMMAND,
} from "./commandIds";
import type { CatoController } from "./controller";
import { resultNotice } from "./results";
import { statusReport } from "./statusReport";
import { rememberTarget, translateTargets } from "./translate";
import { TOKEN_SECRET_KEY, translateTargetsSetting } from "./vscodeSettings";

const RECENT_TARGETS_KEY = "cato.recentTargets";
const SHOW_DETAILS = "Show Details";

export interface CommandContext {
  readonly controller: CatoController;
  readonly globalState: vscode.Memento;
  readonly secrets: vscode.SecretStorage;
}

export function registerCommands(ctx: CommandContext): vscode.Disposable[] {
  const register = (id: string, run: (...args: unknown[]) => Promise<void>): vscode.Disposable =>
    vscode.commands.registerCommand(id, (...args: unknown[]) =>
      guarded(ctx.controller, id, () => run(...args)),
    );
  return [
    register(TRANSLATE_FILE_COMMAND, (uri) =>
      translateFile(ctx, uri instanceof vscode.Uri ? uri : undefined),
    ),
    register(SUMMARIZE_COMMAND, () => atCursor(ctx, SERVER_COMMANDS.summarize)),
    register(GENERATE_COMMAND, () => atCursor(ctx, SERVER_COMMANDS.generate)),
    register(SHOW_STATUS_COMMAND, () => showStatus(ctx)),
    register(RESTART_COMMAND, () => restart(ctx)),
    register(SET_TOKEN_COMMAND, () => setToken(ctx)),
    register(SHOW_OUTPUT_COMMAND, async () => ctx.controller.output.show()),
  ];
}

/** JSON-RPC codes: a request that made no sense where it was made, one cancelled. */
const INVALID_PARAMS = -32602;
const REQUEST_CANCELLED = -32800;

async function guarded(controller: CatoController, id: string, run: () => Promise<void>): Promise<void> {
  try {
    await run();
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    const code = (error as { code?: unknown } | undefined)?.code;
    if (code === REQUEST_CANCELLED) {
      controller.output.info(`${id}: cancelled`);
    } else if (code === INVALID_PARAMS) {
      // A user mistake ("nothing to summarize"): say what to do, no alarm.
      controller.output.warn(`${id}: ${message}`);
      void vscode.window.showWarningMessage(`CATO: ${message}`);
    } else {
      controller.output.error(`${id}: ${message}`);
      void vscode.window.showErrorMessage(`CATO: ${message}`);
    }
  }
}

/** Ask for a target language: known languages but the source's, recent ones first. */
export async function pickTarget(
  globalState: vscode.Memento,
  sourceLanguage: string,
): Promise<string | undefined> {
  const recent = globalState.get<string[]>(RECENT_TARGETS_KEY, []);
  const targets = translateTargets(sourceLanguage, recent, translateTargetsSetting());
  const picked = await vscode.window.showQuickPick(targets, {
    title: "CATO: Translate File",
    placeHolder: "Translate into which language?",
    matchOnDescription: true,
  });
  if (picked === undefined) {
    return undefined;
  }
  await globalState.update(RECENT_TARGETS_KEY, rememberTarget(recent, picked.language));
  return picked.language;
}

async function translateFile(ctx: CommandContext, uri: vscode.Uri | undefined): Promise<void> {
  const target = uri ?? vscode.window.activeTextEditor?.document.uri;
  if (target === undefined) {
    void vscode.window.showWarningMessage("CATO: open the file to translate first.");
    return;
  }
  const document = await vscode.workspace.openTextDocument(target);
  const language = await pickTarget(ctx.globalState, document.languageId);
  if (language === undefined) {
    return;
  }
  const args = { uri: await ctx.controller.protocolUri(document.uri), targetLanguage: language };
  await run(ctx, SERVER_COMMANDS.translateFile, args);
}

async function atCursor(ctx: CommandContext, command: string): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  if (editor === undefined) {
    void vscode.window.showWarningMessage("CATO: place the cursor in an editor first.");
    return;
  }
  const { selection } = editor;
  const args = {
    uri: await ctx.controller.protocolUri(editor.document.uri),
    range: { start: point(selection.start), end: point(selection.end) },
    position: point(selection.active),
  };
  await run(ctx, command, args);
}

function point(position: vscode.Position): { line: number; character: number } {
  return { line: position.line, character: position.character };
}

async function run(ctx: CommandContext, command: string, args: object): Promise<void> {
  const result = await ctx.controller.execute(command, [args]);
  const notice = resultNotice(command, result);
  if (notice !== undefined) {
    const show =
      notice.level === "warning" ? vscode.window.showWarningMessage : vscode.window.showInformationMessage;
    void show(notice.text);
  }
}

async function showStatus(ctx: CommandContext): Promise<void> {
  const report = await ctx.controller.execute(SERVER_COMMANDS.status, []);
  ctx.controller.statusBar.update(report);
  const text = statusReport(report);
  ctx.controller.output.info(`status:\n${text}`);
  const choice = await vscode.window.showInformationMessage(text.split("\n")[0] ?? "CATO", SHOW_DETAILS);
  if (choice === SHOW_DETAILS) {
    ctx.controller.output.show();
  }
}

async function restart(ctx: CommandContext): Promise<void> {
  const client = await ctx.controller.restart();
  if (client !== undefined) {
    void vscode.window.showInformationMessage("CATO: language server restarted.");
  }
}

async function setToken(ctx: CommandContext): Promise<void> {
  const token = await vscode.window.showInputBox({
    title: "CATO: Set Token",
    prompt: "Bearer token of the team service (kept in the OS keychain). Leave empty to remove it.",
    password: true,
    ignoreFocusOut: true,
  });
  if (token === undefined) {
    return;
  }
  if (token.trim() === "") {
    await ctx.secrets.delete(TOKEN_SECRET_KEY);
  } else {
    await ctx.secrets.store(TOKEN_SECRET_KEY, token.trim());
  }
  // The server hears of it through the secret storage's change event (see extension.ts).
}
