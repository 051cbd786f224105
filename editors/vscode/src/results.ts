/**
 * What to tell the user after a server command returns. The server already reports
 * failures as JSON-RPC errors and opens translated files itself; this covers the
 * quieter outcomes (cancelled, edit not applied, problems in generated code).
 */

export type Level = "info" | "warning";

export interface Notice {
  readonly level: Level;
  readonly text: string;
}

const WHAT: Readonly<Record<string, string>> = {
  "cato.summarize": "summary",
  "cato.generate": "generated code",
  "cato.translateFile": "translation",
};

export function resultNotice(command: string, result: unknown): Notice | undefined {
  if (typeof result !== "object" || result === null) {
    return undefined;
  }
  const r = result as Record<string, unknown>;
  const what = WHAT[command] ?? "result";
  if (r["cancelled"] === true) {
    return { level: "info", text: `CATO: the ${what} was cancelled.` };
  }
  if (r["applied"] === false) {
    return { level: "warning", text: `CATO: the editor did not apply the ${what}.` };
  }
  const problems = Array.isArray(r["diagnostics"]) ? r["diagnostics"].map(String) : [];
  if (command === "cato.generate" && problems.length > 0) {
    const shown = problems.slice(0, 3).join("; ");
    return { level: "warning", text: `CATO: the generated code has ${problems.length} problem(s): ${shown}` };
  }
  return undefined;
}
