/**
 * Where the `cato-lsp` executable lives. Kept free of `vscode` and of real I/O (the
 * probes are passed in) so every branch of the search is unit-tested.
 *
 * Order: the `cato.server.command` setting, then the Python extension's interpreter
 * (its `cato-lsp` script, else `python -m cato_lsp`), then `PATH`.
 */
import * as path from "node:path";

export const INSTALL_PACKAGE = "cato-assistant";
export const SERVER_SCRIPT = "cato-lsp";
export const SERVER_MODULE = "cato_lsp";

export type ServerSource = "setting" | "python-extension" | "path";

export interface ServerCommand {
  readonly command: string;
  readonly args: readonly string[];
  readonly source: ServerSource;
}

export interface Probes {
  /** True when `file` exists and may be executed. */
  isExecutable(file: string): Promise<boolean>;
  /** True when `python -c "import module"` succeeds. */
  canImport(python: string, module: string): Promise<boolean>;
  /** The absolute path of `name` on PATH, if any. */
  which(name: string): Promise<string | undefined>;
}

export interface DiscoveryInput {
  /** `cato.server.command`: the executable and its arguments; empty = search. */
  readonly configured: readonly string[];
  /** The interpreter chosen in the Python extension, if that extension is present. */
  readonly interpreter: string | undefined;
  readonly platform: NodeJS.Platform;
}

export type Discovery =
  | { readonly found: true; readonly server: ServerCommand }
  | { readonly found: false; readonly message: string; readonly installCommand: string };

export async function discoverServer(input: DiscoveryInput, probes: Probes): Promise<Discovery> {
  if (input.configured.length > 0) {
    return fromSetting(input.configured, input, probes);
  }
  const tried: string[] = ["the cato.server.command setting (empty)"];
  if (input.interpreter !== undefined) {
    const server = await fromInterpreter(input.interpreter, input.platform, probes);
    if (server !== undefined) {
      return { found: true, server };
    }
    tried.push(`the Python extension's interpreter ${input.interpreter}`);
  }
  const server = await fromPath(input.platform, probes);
  if (server !== undefined) {
    return { found: true, server };
  }
  tried.push("PATH");
  return missing(`looked in ${tried.join(", ")}`, input.interpreter);
}

async function fromSetting(
  configured: readonly string[],
  input: DiscoveryInput,
  probes: Probes,
): Promise<Discovery> {
  const [command = "", ...args] = configured;
  const resolved = await resolveExecutable(command, input.platform, probes);
  if (resolved === undefined) {
    return missing(
      `the cato.server.command setting names ${JSON.stringify(command)}, which is not an executable file`,
      input.interpreter,
    );
  }
  return { found: true, server: { command: resolved, args, source: "setting" } };
}

async function fromInterpreter(
  interpreter: string,
  platform: NodeJS.Platform,
  probes: Probes,
): Promise<ServerCommand | undefined> {
  const script = scriptNextTo(interpreter, platform);
  if (await probes.isExecutable(script)) {
    return { command: script, args: [], source: "python-extension" };
  }
  if (await probes.canImport(interpreter, SERVER_MODULE)) {
    return { command: interpreter, args: ["-m", SERVER_MODULE], source: "python-extension" };
  }
  return undefined;
}

async function fromPath(platform: NodeJS.Platform, probes: Probes): Promise<ServerCommand | undefined> {
  const script = await probes.which(executableName(SERVER_SCRIPT, platform));
  if (script !== undefined) {
    return { command: script, args: [], source: "path" };
  }
  for (const name of pythonNames(platform)) {
    const python = await probes.which(name);
    if (python !== undefined && (await probes.canImport(python, SERVER_MODULE))) {
      return { command: python, args: ["-m", SERVER_MODULE], source: "path" };
    }
  }
  return undefined;
}

async function resolveExecutable(
  command: string,
  platform: NodeJS.Platform,
  probes: Probes,
): Promise<string | undefined> {
  if (command === "") {
    return undefined;
  }
  if (hasDirectory(command)) {
    return (await probes.isExecutable(command)) ? command : undefined;
  }
  return probes.which(executableName(command, platform));
}

function hasDirectory(command: string): boolean {
  return command.includes("/") || command.includes("\\");
}

/** The console script pip installs beside an interpreter (`bin/` or `Scripts\`). */
export function scriptNextTo(interpreter: string, platform: NodeJS.Platform): string {
  const lib = platform === "win32" ? path.win32 : path.posix;
  return lib.join(lib.dirname(interpreter), executableName(SERVER_SCRIPT, platform));
}

function executableName(name: string, platform: NodeJS.Platform): string {
  return platform === "win32" && !name.toLowerCase().endsWith(".exe") ? `${name}.exe` : name;
}

function pythonNames(platform: NodeJS.Platform): readonly string[] {
  return platform === "win32" ? ["python", "py"] : ["python3", "python"];
}

/** The command that installs the server into the interpreter the user works with. */
export function installCommand(interpreter: string | undefined): string {
  const python = interpreter === undefined ? "python3" : quote(interpreter);
  return `${python} -m pip install ${INSTALL_PACKAGE}`;
}

function quote(arg: string): string {
  return /^[\w./\\:-]+$/.test(arg) ? arg : JSON.stringify(arg);
}

function missing(detail: string, interpreter: string | undefined): Discovery {
  const install = installCommand(interpreter);
  return {
    found: false,
    installCommand: install,
    message:
      `The CATO language server (${SERVER_SCRIPT}) was not found: ${detail}. ` +
      `Install it with \`${install}\` (or \`scripts/install\` in a CATO checkout), ` +
      "or set cato.server.command.",
  };
}
