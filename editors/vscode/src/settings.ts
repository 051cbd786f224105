/**
 * The `cato` settings as the language server wants them (its `initializationOptions`
 * and `workspace/configuration` answer). Pure: values come through a reader so the
 * mapping is unit-tested without VS Code.
 *
 * Only values the user set are sent, so the server's own defaults stay in force; the
 * client-only keys (`server.*`, `trace.*`) never reach the server, which rejects
 * unknown keys.
 */
import * as os from "node:os";
import * as path from "node:path";

export const SECTION = "cato";
export const TASK_KINDS = ["complete", "generate", "summarize", "translate"] as const;
export type TaskKind = (typeof TASK_KINDS)[number];

const TASK_FIELDS = ["model", "slaMs", "slaMetric", "maxTokens"] as const;

/** Dotted keys under `cato.` that the server understands, one per contributed setting. */
export const SERVER_KEYS: readonly string[] = [
  "mode",
  "config",
  "url",
  "token",
  "user",
  ...TASK_KINDS.flatMap((kind) => TASK_FIELDS.map((field) => `tasks.${kind}.${field}`)),
  // The server reads a FIM template for completion prompts only.
  "tasks.complete.fimFamily",
  "debounceMs",
  "context.budgetTokens",
  "context.fitSla",
  "context.minBudgetTokens",
  "context.prefixShare",
  "context.anchorShare",
  "context.snippetTokens",
  "context.maxSnippets",
  "context.maxCandidates",
  "languages",
  "translateTargets",
  "cacheSize",
  "lineMaxTokens",
  "requestTimeoutS",
];

/** Keys under `cato.` that only the extension reads. */
export const CLIENT_KEYS: readonly string[] = ["server.command", "trace.server"];

/** Settings that need a new server process (not just new settings) when they change. */
export const RESTART_KEYS: readonly string[] = ["server.command", "languages"];

/** A user-set value of `cato.<key>`, or undefined when the user left it at its default. */
export type SettingReader = (key: string) => unknown;

export interface PathContext {
  readonly home: string;
  readonly workspaceFolder: string | undefined;
}

export type JsonObject = { [key: string]: unknown };

export function serverSettings(
  read: SettingReader,
  secretToken: string | undefined,
  paths: PathContext = { home: os.homedir(), workspaceFolder: undefined },
): JsonObject {
  const out: JsonObject = {};
  for (const key of SERVER_KEYS) {
    const value = cleaned(read(key));
    if (value !== undefined) {
      setPath(out, key, key === "config" ? resolvePath(String(value), paths) : value);
    }
  }
  if (secretToken !== undefined && secretToken !== "") {
    out["token"] = secretToken;
  }
  return out;
}

/** Empty strings and null mean "not set": the server would reject them. */
function cleaned(value: unknown): unknown {
  if (value === null || value === undefined) {
    return undefined;
  }
  if (typeof value === "string") {
    const trimmed = value.trim();
    return trimmed === "" ? undefined : trimmed;
  }
  return value;
}

function setPath(target: JsonObject, dotted: string, value: unknown): void {
  const parts = dotted.split(".");
  const last = parts.pop() as string;
  let node = target;
  for (const part of parts) {
    const next = node[part];
    if (typeof next === "object" && next !== null) {
      node = next as JsonObject;
    } else {
      const created: JsonObject = {};
      node[part] = created;
      node = created;
    }
  }
  node[last] = value;
}

/**
 * Dotted keys set in `before` but gone from `after`. The server layers new settings
 * over its initialization options, so such a removal only takes effect on a restart.
 */
export function removedKeys(before: JsonObject, after: JsonObject): string[] {
  const present = new Set(leafKeys(after));
  return leafKeys(before).filter((key) => !present.has(key));
}

function leafKeys(node: JsonObject, prefix = ""): string[] {
  return Object.entries(node).flatMap(([key, value]) => {
    const dotted = prefix === "" ? key : `${prefix}.${key}`;
    const nested = typeof value === "object" && value !== null && !Array.isArray(value);
    return nested ? leafKeys(value as JsonObject, dotted) : [dotted];
  });
}

/** `~`, `${workspaceFolder}` and relative paths, as a user means them in a setting. */
export function resolvePath(value: string, paths: PathContext): string {
  let result = value;
  if (paths.workspaceFolder !== undefined) {
    result = result.split("${workspaceFolder}").join(paths.workspaceFolder);
  }
  if (result === "~" || result.startsWith("~/") || result.startsWith("~\\")) {
    result = path.join(paths.home, result.slice(1));
  }
  if (!path.isAbsolute(result) && paths.workspaceFolder !== undefined) {
    result = path.join(paths.workspaceFolder, result);
  }
  return result;
}

/** The command line of `cato.server.command`: a string is split on blanks. */
export function configuredCommand(value: unknown): string[] {
  if (Array.isArray(value)) {
    return value.filter((part): part is string => typeof part === "string" && part !== "");
  }
  if (typeof value === "string") {
    return value.split(/\s+/).filter((part) => part !== "");
  }
  return [];
}

/** True when `cato.<key>` of any of `keys` is touched by a configuration change. */
export function touches(affects: (section: string) => boolean, keys: readonly string[]): boolean {
  return keys.some((key) => affects(`${SECTION}.${key}`));
}
