/**
 * The server's stderr, handled as the language client's default does (each line to the
 * output channel, as an error) with its last lines kept: when the server exits before
 * it answers (a broken install, a Python too old), the cause is the last line it
 * printed, and the user should see that line, not only "CATO stopped".
 */
import * as readline from "node:readline";
import type { Readable } from "node:stream";

import type { StdioOptions } from "vscode-languageclient/node";

const KEPT_LINES = 20;

export class ServerTail {
  private readonly lines: string[] = [];
  private closed: Promise<void> | undefined;

  /** The client's `stdioOptions`: stdout lines as info (the client's default), stderr
   * lines as errors, the last of them kept. */
  stdioOptions(): Required<StdioOptions> {
    return {
      stdout: (input, output) => {
        lines(input).on("line", (line) => output.info(line));
      },
      stderr: (input, output) => {
        const reader = lines(input);
        this.closed = new Promise((resolve) => reader.on("close", resolve));
        reader.on("line", (line) => {
          output.error(line);
          if (line.trim() !== "") {
            this.lines.push(line.trim());
            this.lines.splice(0, this.lines.length - KEPT_LINES);
          }
        });
      },
    };
  }

  /**
   * The last non-blank line the server wrote to stderr (at most 300 characters), once
   * its stderr has closed or `waitMs` has passed: a server that exited may still have
   * lines in the pipe when the client gives up on it.
   */
  async lastLine(waitMs = 1000): Promise<string | undefined> {
    if (this.closed !== undefined) {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, waitMs);
      });
      await Promise.race([this.closed, timeout]);
      clearTimeout(timer);
    }
    return this.lines.at(-1)?.slice(0, 300);
  }
}

function lines(input: Readable): readline.Interface {
  return readline.createInterface({ input, crlfDelay: Infinity, terminal: false, historySize: 0 });
}
