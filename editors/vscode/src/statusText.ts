/**
 * What the status-bar item says for a `cato/status` notification. Pure (no `vscode`):
 * the payload is untrusted JSON, so each field is checked before it is shown.
 */

export interface CatoStatus {
  readonly reachable: boolean;
  readonly state: string | undefined;
  readonly replicasReady: number | undefined;
  readonly replicasTotal: number | undefined;
  readonly lastTtftMs: number | undefined;
  /** Keystroke to suggestion (request in to answer out) over the recent suggestions. */
  readonly suggestMs: SuggestLatency | undefined;
  /** SLA attainment per task kind, 0..1. */
  readonly slaAttainment: Readonly<Record<string, number>>;
  readonly detail: string | undefined;
  readonly mode: string | undefined;
}

export interface SuggestLatency {
  readonly p50: number;
  readonly p90: number | undefined;
  readonly p99: number | undefined;
  readonly count: number;
}

export type Severity = "ok" | "warning" | "error";

/** Below this SLA attainment (any kind) the item turns to a warning. */
export const WARN_ATTAINMENT = 0.9;

export interface StatusView {
  readonly text: string;
  readonly tooltip: string;
  readonly severity: Severity;
}

/** States in which the server has a working orchestrator (or is bringing one up). */
const GOOD_STATES = new Set(["idle", "starting", "ready"]);

/** Short words for the server's failure states (cato_lsp/status.py). */
const FAILURE_LABELS: Readonly<Record<string, string>> = {
  config: "config error",
  unavailable: "no replica",
  settings: "invalid settings",
};

/** The status before the server has said anything. */
export const INITIAL_STATUS: CatoStatus = parseStatus({ state: "starting" });

export function parseStatus(payload: unknown): CatoStatus {
  const p = isRecord(payload) ? payload : {};
  const state = str(p["state"]);
  const reachable = bool(p["reachable"]) ?? (state === undefined || GOOD_STATES.has(state));
  return {
    reachable,
    state,
    replicasReady: num(p["replicasReady"]),
    replicasTotal: num(p["replicasTotal"]),
    lastTtftMs: num(p["lastTtftMs"]),
    suggestMs: suggestLatency(p["suggestMs"]),
    slaAttainment: attainment(p["slaAttainment"]),
    detail: str(p["detail"]),
    mode: str(p["mode"]),
  };
}

/** The lowest attainment over the task kinds seen so far (what needs attention). */
export function worstAttainment(status: CatoStatus): number | undefined {
  const values = Object.values(status.slaAttainment);
  return values.length === 0 ? undefined : Math.min(...values);
}

export function statusView(status: CatoStatus): StatusView {
  return {
    text: statusText(status),
    tooltip: statusTooltip(status),
    severity: severity(status),
  };
}

function statusText(status: CatoStatus): string {
  if (!status.reachable) {
    const state = status.state ?? "unreachable";
    return `$(error) CATO ${FAILURE_LABELS[state] ?? state}`;
  }
  if (status.state === "starting") {
    return "$(sync~spin) CATO";
  }
  const parts = ["$(sparkle) CATO"];
  if (status.replicasReady !== undefined) {
    const total = status.replicasTotal === undefined ? "" : `/${status.replicasTotal}`;
    parts.push(`${status.replicasReady}${total}`);
  }
  if (status.lastTtftMs !== undefined) {
    parts.push(formatMs(status.lastTtftMs));
  }
  if (status.suggestMs !== undefined) {
    // what the user waits for, beside what the replica took
    parts.push(`wait ${formatMs(status.suggestMs.p50)}`);
  }
  const worst = worstAttainment(status);
  if (worst !== undefined) {
    parts.push(`SLA ${formatPercent(worst)}`);
  }
  return parts.join(" ");
}

function statusTooltip(status: CatoStatus): string {
  const reach = status.reachable ? "orchestrator reachable" : "orchestrator not reachable";
  const lines = [`CATO: ${reach}${status.state === undefined ? "" : ` (${status.state})`}`];
  if (status.mode !== undefined) {
    lines.push(`Mode: ${status.mode}`);
  }
  if (status.replicasReady !== undefined) {
    const total = status.replicasTotal === undefined ? "" : ` of ${status.replicasTotal}`;
    lines.push(`Replicas ready: ${status.replicasReady}${total}`);
  }
  if (status.lastTtftMs !== undefined) {
    lines.push(`Last time to first token: ${formatMs(status.lastTtftMs)}`);
  }
  const waited = status.suggestMs;
  if (waited !== undefined) {
    const tail = [
      waited.p90 === undefined ? "" : `, p90 ${formatMs(waited.p90)}`,
      waited.p99 === undefined ? "" : `, p99 ${formatMs(waited.p99)}`,
    ].join("");
    lines.push(`Keystroke to suggestion: p50 ${formatMs(waited.p50)}${tail} (last ${waited.count})`);
  }
  for (const [kind, value] of Object.entries(status.slaAttainment).sort()) {
    lines.push(`SLA attainment, ${kind}: ${formatPercent(value)}`);
  }
  if (status.detail !== undefined) {
    lines.push(status.detail);
  }
  lines.push("Click for details");
  return lines.join("\n");
}

function severity(status: CatoStatus): Severity {
  if (!status.reachable) {
    return "error";
  }
  if (status.replicasReady === 0 || (worstAttainment(status) ?? 1) < WARN_ATTAINMENT) {
    return "warning";
  }
  return "ok";
}

export function formatMs(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}

export function formatPercent(fractionValue: number): string {
  return `${Math.round(fractionValue * 100)}%`;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function str(value: unknown): string | undefined {
  return typeof value === "string" && value !== "" ? value : undefined;
}

function bool(value: unknown): boolean | undefined {
  return typeof value === "boolean" ? value : undefined;
}

function num(value: unknown): number | undefined {
  return typeof value === "number" && Number.isFinite(value) && value >= 0 ? value : undefined;
}

function suggestLatency(value: unknown): SuggestLatency | undefined {
  if (!isRecord(value)) {
    return undefined;
  }
  const p50 = num(value["p50"]);
  return p50 === undefined
    ? undefined
    : { p50, p90: num(value["p90"]), p99: num(value["p99"]), count: num(value["count"]) ?? 0 };
}

function attainment(value: unknown): Record<string, number> {
  const out: Record<string, number> = {};
  if (isRecord(value)) {
    for (const [kind, raw] of Object.entries(value)) {
      const n = num(raw);
      if (n !== undefined && n <= 1) {
        out[kind] = n;
      }
    }
  }
  return out;
}
