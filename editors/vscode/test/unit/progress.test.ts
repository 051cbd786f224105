/** Server progress as a cancellable notification, with a fake client that records. */
import { describe, expect, it } from "vitest";

import { followProgress, notifyProgress, type ProgressClient } from "../../src/progress";
import { mock, ProgressLocation } from "../mocks/vscode";

type Value = {
  kind: "begin" | "report" | "end";
  title?: string;
  message?: string;
  percentage?: number;
  cancellable?: boolean;
};

class FakeClient {
  readonly sent: { method: string; params: unknown }[] = [];
  readonly progress = new Map<string | number, (value: Value) => void>();
  createHandler: ((params: { token: string | number }) => void) | undefined;
  onRequest(type: { method: string }, handler: (params: { token: string | number }) => void) {
    expect(type.method).toBe("window/workDoneProgress/create");
    this.createHandler = handler;
    return { dispose: () => undefined };
  }
  onProgress(_type: unknown, token: string | number, handler: (value: Value) => void) {
    this.progress.set(token, handler);
    return { dispose: () => this.progress.delete(token) };
  }
  sendNotification(type: { method: string }, params: unknown) {
    this.sent.push({ method: type.method, params });
    return Promise.resolve();
  }
  emit(token: string | number, value: Value): void {
    this.progress.get(token)?.(value);
  }
}

async function settle(): Promise<void> {
  for (let i = 0; i < 5; i += 1) {
    await new Promise((resolve) => setImmediate(resolve));
  }
}

describe("server progress", () => {
  it("shows as a notification whose Cancel cancels the server's task", async () => {
    mock.reset();
    const client = new FakeClient();
    notifyProgress(client as unknown as ProgressClient);
    client.createHandler?.({ token: "cato-1" });
    client.emit("cato-1", {
      kind: "begin",
      title: "CATO: translate to rust",
      cancellable: true,
      percentage: 0,
    });
    client.emit("cato-1", { kind: "report", percentage: 40, message: "chunk-1 done" });
    client.emit("cato-1", { kind: "report", percentage: 100 });
    const [shown] = mock.progress;
    expect(shown?.options).toEqual({
      location: ProgressLocation.Notification,
      title: "CATO: translate to rust",
      cancellable: true,
    });
    expect(shown?.reports).toEqual([
      { increment: 0 },
      { message: "chunk-1 done", increment: 40 },
      { increment: 60 },
    ]);
    shown?.cancel.cancel();
    expect(client.sent).toEqual([{ method: "window/workDoneProgress/cancel", params: { token: "cato-1" } }]);
    client.emit("cato-1", { kind: "end", message: "Cancelled" });
    await settle();
    expect(shown?.done).toBe(true);
    expect(client.progress.size).toBe(0);
  });

  it("ends a notification whose end came before VS Code showed it", async () => {
    mock.reset();
    const client = new FakeClient();
    followProgress(client as unknown as ProgressClient, 7);
    client.emit(7, { kind: "end" });
    client.emit(7, { kind: "begin", title: "late" }); // listener gone: ignored
    await settle();
    expect(mock.progress).toEqual([]);
  });
});
