/**
 * The server's long tasks (translate, summarize, generate) as a notification with a
 * Cancel button. vscode-languageclient shows server-created progress as a status-bar
 * spinner that cannot be cancelled; this replaces its `window/workDoneProgress/create`
 * handler, and Cancel sends `window/workDoneProgress/cancel`, which stops the task (the
 * server closes the orchestrator stream, so the replicas stop too).
 */
import * as vscode from "vscode";
import {
  type ProgressToken,
  WorkDoneProgress,
  WorkDoneProgressCancelNotification,
  WorkDoneProgressCreateRequest,
} from "vscode-languageserver-protocol";

interface ProgressValue {
  readonly kind: "begin" | "report" | "end";
  readonly title?: string;
  readonly message?: string;
  readonly percentage?: number;
  readonly cancellable?: boolean;
}

/** What this module needs of a LanguageClient. */
export interface ProgressClient {
  onRequest(
    type: typeof WorkDoneProgressCreateRequest.type,
    handler: (params: { token: ProgressToken }) => void,
  ): vscode.Disposable;
  onProgress(
    type: typeof WorkDoneProgress.type,
    token: ProgressToken,
    handler: (value: ProgressValue) => void,
  ): vscode.Disposable;
  sendNotification(
    type: typeof WorkDoneProgressCancelNotification.type,
    params: { token: ProgressToken },
  ): Promise<void>;
}

/** Show every progress the server creates as a cancellable notification. */
export function notifyProgress(client: ProgressClient): vscode.Disposable {
  return client.onRequest(WorkDoneProgressCreateRequest.type, ({ token }) => {
    followProgress(client, token);
  });
}

/** One progress token, from `begin` to `end`, as a notification. */
export function followProgress(client: ProgressClient, token: ProgressToken): void {
  let reported = 0;
  let ended = false;
  let finish: (() => void) | undefined;
  let sink: vscode.Progress<{ message?: string; increment?: number }> | undefined;

  const report = (value: ProgressValue): void => {
    if (sink === undefined) {
      return;
    }
    if (typeof value.percentage === "number") {
      const percentage = Math.max(0, Math.min(value.percentage, 100));
      const increment = Math.max(0, percentage - reported);
      reported += increment;
      sink.report(value.message === undefined ? { increment } : { message: value.message, increment });
    } else if (typeof value.message === "string") {
      sink.report({ message: value.message });
    }
  };

  const listener = client.onProgress(WorkDoneProgress.type, token, (value) => {
    if (value.kind === "begin") {
      void vscode.window.withProgress(
        {
          location: vscode.ProgressLocation.Notification,
          title: value.title ?? "CATO",
          cancellable: value.cancellable ?? false,
        },
        (progress, cancel) => {
          sink = progress;
          cancel.onCancellationRequested(() => {
            void client.sendNotification(WorkDoneProgressCancelNotification.type, { token });
          });
          report(value);
          return new Promise<void>((resolve) => {
            finish = resolve;
            if (ended) {
              resolve();
            }
          });
        },
      );
    } else if (value.kind === "report") {
      report(value);
    } else {
      ended = true;
      listener.dispose();
      finish?.();
    }
  });
}
