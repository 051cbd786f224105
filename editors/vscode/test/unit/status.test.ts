import { beforeEach, describe, expect, it } from "vitest";

import { StatusBar } from "../../src/statusBar";
import { statusReport } from "../../src/statusReport";
import { parseStatus, statusView, worstAttainment } from "../../src/statusText";
import { mock } from "../mocks/vscode";

/** A `cato/status` body as cato_lsp/status.py publishes it. */
function payload(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    state: "ready",
    reachable: true,
    detail: null,
    replicasReady: 2,
    replicasTotal: 3,
    lastTtftMs: 142.4,
    slaAttainment: { complete: 0.96, translate: 1.0 },
    mode: "embedded",
    backend: "embedded (built-in default)",
    message: null,
    completions: { requests: 10, shown: 4, accepted: 1, acceptance_rate: 0.25 },
    ...overrides,
  };
}

describe("statusView", () => {
  it("shows replicas, the last TTFT and the worst SLA attainment", () => {
    const view = statusView(parseStatus(payload()));
    expect(view.text).toBe("$(sparkle) CATO 2/3 142 ms SLA 96%");
    expect(view.severity).toBe("ok");
    expect(view.tooltip).toContain("Replicas ready: 2 of 3");
    expect(view.tooltip).toContain("SLA attainment, complete: 96%");
    expect(view.tooltip).toContain("SLA attainment, translate: 100%");
    expect(view.tooltip).toContain("Mode: embedded");
  });

  it("shows the keystroke-to-suggestion median beside the TTFT, percentiles in the tooltip", () => {
    const waited = { p50: 241.4, p90: 380, p99: 1210, last: 200, count: 37 };
    const view = statusView(parseStatus(payload({ suggestMs: waited })));
    expect(view.text).toBe("$(sparkle) CATO 2/3 142 ms wait 241 ms SLA 96%");
    expect(view.tooltip).toContain("Keystroke to suggestion: p50 241 ms, p90 380 ms, p99 1.2 s (last 37)");
    const none = { p50: null, p90: null, p99: null, last: null, count: 0 };
    expect(statusView(parseStatus(payload({ suggestMs: none }))).text).toBe(
      "$(sparkle) CATO 2/3 142 ms SLA 96%",
    );
  });

  it("warns when an SLA is missed often or no replica is ready", () => {
    expect(statusView(parseStatus(payload({ slaAttainment: { complete: 0.5 } }))).severity).toBe("warning");
    expect(statusView(parseStatus(payload({ replicasReady: 0 }))).severity).toBe("warning");
  });

  it("turns to an error with the failure's name when the orchestrator is unreachable", () => {
    const view = statusView(
      parseStatus(
        payload({ state: "unauthorized", reachable: false, detail: "http://x refused the token (401)" }),
      ),
    );
    expect(view.text).toBe("$(error) CATO unauthorized");
    expect(view.severity).toBe("error");
    expect(view.tooltip).toContain("refused the token");
  });

  it("names the server's failure states in a few words", () => {
    const text = (state: string): string => statusView(parseStatus({ state, reachable: false })).text;
    expect(text("settings")).toBe("$(error) CATO invalid settings");
    expect(text("unavailable")).toBe("$(error) CATO no replica");
    expect(text("unreachable")).toBe("$(error) CATO unreachable");
  });

  it("infers reachability from the state when the flag is absent", () => {
    expect(parseStatus({ state: "unreachable" }).reachable).toBe(false);
    expect(parseStatus({ state: "ready" }).reachable).toBe(true);
  });

  it("formats seconds for slow first tokens and spins while starting", () => {
    expect(statusView(parseStatus(payload({ lastTtftMs: 2340 }))).text).toContain("2.3 s");
    expect(statusView(parseStatus({ state: "starting" })).text).toBe("$(sync~spin) CATO");
  });

  it("ignores malformed fields instead of showing them", () => {
    const status = parseStatus({
      state: 3,
      replicasReady: "two",
      lastTtftMs: -1,
      slaAttainment: { complete: 7, generate: "x", summarize: 0.5 },
    });
    expect(status.replicasReady).toBeUndefined();
    expect(status.lastTtftMs).toBeUndefined();
    expect(status.slaAttainment).toEqual({ summarize: 0.5 });
    expect(worstAttainment(status)).toBe(0.5);
    expect(parseStatus("not an object").reachable).toBe(true);
  });
});

describe("StatusBar", () => {
  beforeEach(() => mock.reset());

  it("renders each cato/status notification and opens Show Status on click", () => {
    const bar = new StatusBar();
    const item = mock.statusItems[0];
    expect(item?.visible).toBe(true);
    expect(item?.command).toBe("cato.editor.showStatus");
    bar.update(payload());
    expect(item?.text).toBe("$(sparkle) CATO 2/3 142 ms SLA 96%");
    expect(item?.backgroundColor).toBeUndefined();
    bar.update(payload({ state: "unreachable", reachable: false }));
    expect(item?.text).toBe("$(error) CATO unreachable");
    expect(item?.backgroundColor?.id).toBe("statusBarItem.errorBackground");
    bar.stopped("cato-lsp not found");
    expect(item?.text).toBe("$(error) CATO stopped");
    expect(item?.tooltip).toContain("cato-lsp not found");
    bar.dispose();
    expect(item?.disposed).toBe(true);
  });
});

describe("statusReport", () => {
  it("adds completion counters, replicas and the settings in force", () => {
    const text = statusReport({
      ...payload(),
      orchestrator: {
        last_ttft_ms: 120,
        replicas: [{ id: "tiny-0", model: "tiny", state: "ready", in_flight: 1 }],
      },
      settings: { mode: "embedded", token: null },
    });
    expect(text.split("\n")[0]).toBe("CATO: orchestrator reachable (ready)");
    expect(text).toContain("Backend: embedded (built-in default)");
    expect(text).toContain("10 requested");
    expect(text).toContain("acceptance 25%");
    expect(text).toContain("replica tiny-0 (tiny): ready, 1 in flight");
    expect(text).toContain('"mode": "embedded"');
    expect(text).not.toContain("Click for details");
  });
});
