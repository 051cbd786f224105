/**
 * Command identifiers. The server's commands (`cato.summarize`, ...) are registered in
 * VS Code by the language client itself, which forwards them unchanged, so the
 * extension's own palette commands (which first gather the cursor, selection or target
 * language) need ids of their own.
 */

/** Commands the language server executes (`workspace/executeCommand`). */
export const SERVER_COMMANDS = {
  summarize: "cato.summarize",
  generate: "cato.generate",
  translateFile: "cato.translateFile",
  status: "cato.status",
  accept: "cato.accept",
} as const;

/** The notification that carries the service's state. */
export const STATUS_NOTIFICATION = "cato/status";

export const TRANSLATE_FILE_COMMAND = "cato.editor.translateFile";
export const SUMMARIZE_COMMAND = "cato.editor.summarize";
export const GENERATE_COMMAND = "cato.editor.generate";
export const SHOW_STATUS_COMMAND = "cato.editor.showStatus";
export const RESTART_COMMAND = "cato.editor.restartServer";
export const SET_TOKEN_COMMAND = "cato.editor.setToken";
export const SHOW_OUTPUT_COMMAND = "cato.editor.showOutput";
