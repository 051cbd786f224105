/** The file-system and process probes `discoverServer` runs against the real machine. */
import { execFile } from "node:child_process";
import { constants } from "node:fs";
import { access, stat } from "node:fs/promises";
import * as path from "node:path";

import type { Probes } from "./discovery";

const IMPORT_TIMEOUT_MS = 15_000;

export function nodeProbes(env: NodeJS.ProcessEnv = process.env): Probes {
  return {
    isExecutable,
    canImport,
    which: (name) => which(name, env),
  };
}

async function isExecutable(file: string): Promise<boolean> {
  try {
    const info = await stat(file);
    if (!info.isFile()) {
      return false;
    }
    await access(file, process.platform === "win32" ? constants.F_OK : constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function canImport(python: string, module: string): Promise<boolean> {
  return new Promise((resolve) => {
    execFile(python, ["-c", `import ${module}`], { timeout: IMPORT_TIMEOUT_MS, windowsHide: true }, (error) =>
      resolve(error === null),
    );
  });
}

async function which(name: string, env: NodeJS.ProcessEnv): Promise<string | undefined> {
  const dirs = (env["PATH"] ?? env["Path"] ?? "").split(path.delimiter).filter((d) => d !== "");
  for (const dir of dirs) {
    const candidate = path.join(dir, name);
    if (await isExecutable(candidate)) {
      return candidate;
    }
  }
  return undefined;
}
