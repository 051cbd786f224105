/** The status-bar item: shows the latest `cato/status`, opens "Show Status" on click. */
import * as vscode from "vscode";

import { SHOW_STATUS_COMMAND } from "./commandIds";
import { type CatoStatus, INITIAL_STATUS, parseStatus, type Severity, statusView } from "./statusText";

const BACKGROUNDS: Record<Severity, string | undefined> = {
  ok: undefined,
  warning: "statusBarItem.warningBackground",
  error: "statusBarItem.errorBackground",
};

export class StatusBar implements vscode.Disposable {
  private readonly item: vscode.StatusBarItem;
  private current: CatoStatus = INITIAL_STATUS;

  constructor() {
    this.item = vscode.window.createStatusBarItem("cato.status", vscode.StatusBarAlignment.Right, 100);
    this.item.name = "CATO";
    this.item.command = SHOW_STATUS_COMMAND;
    this.render();
    this.item.show();
  }

  get status(): CatoStatus {
    return this.current;
  }

  /** A `cato/status` notification's params. */
  update(payload: unknown): void {
    this.current = parseStatus(payload);
    this.render();
  }

  /** The server is not running (missing, crashed or stopped). */
  stopped(reason: string): void {
    this.current = { ...parseStatus({ state: "stopped", reachable: false }), detail: reason };
    this.render();
  }

  private render(): void {
    const view = statusView(this.current);
    this.item.text = view.text;
    this.item.tooltip = view.tooltip;
    const background = BACKGROUNDS[view.severity];
    this.item.backgroundColor = background === undefined ? undefined : new vscode.ThemeColor(background);
  }

  dispose(): void {
    this.item.dispose();
  }
}
