/**
 * The server's stderr, as the language client hands it to the output channel, with its
 * last lines kept: when the server exits before it answers (a broken install, a Python
 * too old), the cause is the last line it printed, and the user should see that line,
 * not only "CATO stopped".
 */
import type * as vscode from "vscode";

const KEPT_CHARS = 4096;

export interface TailedOutput {
  /** The channel to give the client: writes through, keeping what `append` wrote. */
  readonly channel: vscode.LogOutputChannel;
  /** The last non-blank line the server wrote to stderr, if any (at most 300 chars). */
  lastLine(): string | undefined;
}

/** `output`, with the text the client appends (the server's stderr) remembered. */
export function tailed(output: vscode.LogOutputChannel): TailedOutput {
  let tail = "";
  const append = (value: string): void => {
    tail = (tail + value).slice(-KEPT_CHARS);
    output.append(value);
  };
  const channel = new Proxy(output, {
    get(target, property, receiver) {
      if (property === "append") {
        return append;
      }
      const value: unknown = Reflect.get(target, property, receiver);
      return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  return {
    channel,
    lastLine() {
      const lines = tail.split(/\r?\n/).filter((line) => line.trim() !== "");
      const last = lines.at(-1)?.trim();
      return last === undefined ? undefined : last.slice(0, 300);
    },
  };
}
