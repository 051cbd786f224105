/** The text of "CATO: Show Status", from the server's `cato.status` answer. */
import { formatMs, formatPercent, parseStatus, statusView } from "./statusText";

export function statusReport(report: unknown): string {
  const r = isRecord(report) ? report : {};
  const lines = statusView(parseStatus(r))
    .tooltip.split("\n")
    .filter((l) => l !== "Click for details");
  const backend = r["backend"];
  if (typeof backend === "string" && backend !== "") {
    lines.push(`Backend: ${backend}`);
  }
  const message = r["message"];
  if (typeof message === "string" && message !== "") {
    lines.push(`Orchestrator: ${message}`);
  }
  lines.push(...completionLines(r["completions"]));
  lines.push(...replicaLines(r["orchestrator"]));
  if (isRecord(r["settings"])) {
    lines.push("Settings in force:", JSON.stringify(r["settings"], null, 2));
  }
  return lines.join("\n");
}

function completionLines(stats: unknown): string[] {
  if (!isRecord(stats)) {
    return [];
  }
  const count = (key: string): string => (typeof stats[key] === "number" ? String(stats[key]) : "0");
  const rate = stats["acceptance_rate"];
  const acceptance = typeof rate === "number" ? formatPercent(rate) : "n/a";
  return [
    `Completions: ${count("requests")} requested, ${count("upstream")} sent upstream, ` +
      `${count("cache_hits")} from cache, ${count("shown")} shown, ${count("accepted")} accepted ` +
      `(acceptance ${acceptance})`,
  ];
}

function replicaLines(orchestrator: unknown): string[] {
  if (!isRecord(orchestrator) || !Array.isArray(orchestrator["replicas"])) {
    return [];
  }
  const lines: string[] = [];
  for (const replica of orchestrator["replicas"]) {
    if (isRecord(replica)) {
      const inFlight = typeof replica["in_flight"] === "number" ? replica["in_flight"] : 0;
      lines.push(
        `  replica ${String(replica["id"])} (${String(replica["model"])}): ${String(replica["state"])}, ` +
          `${inFlight} in flight`,
      );
    }
  }
  const ttft = orchestrator["last_ttft_ms"];
  const header = typeof ttft === "number" ? `Replicas (last TTFT ${formatMs(ttft)}):` : "Replicas:";
  return lines.length === 0 ? [] : [header, ...lines];
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
