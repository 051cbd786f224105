/**
 * Where the `cato-lsp` executable lives. Kept free of `vscode` and of real I/O (the
 * probes are passed in) so every branch of the search is unit-tested.
 *
 * Order: the `cato.server.command` setting, then the Python extension's interpreter
 * (its `cato-lsp` script, else `python -m cato_lsp`), then each workspace folder's
 * `.venv` (what `scripts/install` makes; trusted workspaces only, since it is a program
 * of the workspace), then `PATH`, then pipx's folder (`$PIPX_BIN_DIR`, else
 * `~/.local/bin`), so a server installed any of the documented ways is found.
 */
import * as path from "node:path";

export const SERVER_SCRIPT = "cato-lsp";
export const SERVER_MODULE = "cato_lsp";

export type ServerSource = "setting" | "python-extension" | "workspace-venv" | "path" | "pipx";

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
  /** What the setting holds when it was not applied (see serverCommandNote). */
  readonly configuredNote?: string | undefined;
  /** The interpreter chosen in the Python extension, if that extension is present. */
  readonly interpreter: string | undefined;
  readonly platform: NodeJS.Platform;
  /** The workspace folders' paths; their `.venv` is searched when the workspace is trusted. */
  readonly workspaceFolders?: readonly string[];
  readonly workspaceTrusted?: boolean;
  /** The user's home folder and `$PIPX_BIN_DIR`, where pipx puts executables. */
  readonly home?: string;
  readonly pipxBinDir?: string | undefined;
}

export type Discovery =
  | { readonly found: true; readonly server: ServerCommand }
  | { readonly found: false; readonly message: string; readonly installCommand: string };

export async function discoverServer(input: DiscoveryInput, probes: Probes): Promise<Discovery> {
  if (input.configured.length > 0) {
    return fromSetting(input.configured, input, probes);
  }
  const tried: string[] = [`the cato.server.command setting (${input.configuredNote ?? "not set"})`];
  if (input.interpreter !== undefined) {
    const server = await fromInterpreter(input.interpreter, input.platform, probes);
    if (server !== undefined) {
      return { found: true, server };
    }
    tried.push(`the Python extension's interpreter ${input.interpreter}`);
  }
  const folders = input.workspaceFolders ?? [];
  if (input.workspaceTrusted === true) {
    for (const folder of folders) {
      const script = venvScript(folder, input.platform);
      if (await probes.isExecutable(script)) {
        return { found: true, server: { command: script, args: [], source: "workspace-venv" } };
      }
      tried.push(script);
    }
  } else if (folders.length > 0) {
    tried.push("(not the workspace's .venv: the workspace is not trusted)");
  }
  const server = await fromPath(input.platform, probes);
  if (server !== undefined) {
    return { found: true, server };
  }
  tried.push("PATH");
  for (const dir of pipxDirs(input)) {
    const script = lib(input.platform).join(dir, executableName(SERVER_SCRIPT, input.platform));
    if (await probes.isExecutable(script)) {
      return { found: true, server: { command: script, args: [], source: "pipx" } };
    }
    tried.push(script);
  }
  return missing(`looked in ${tried.join(", ")}`, await checkoutIn(folders, input, probes));
}

function lib(platform: NodeJS.Platform): typeof path.posix {
  return platform === "win32" ? path.win32 : path.posix;
}

/** `<folder>/.venv/bin/cato-lsp` (`.venv\Scripts\cato-lsp.exe` on Windows). */
export function venvScript(folder: string, platform: NodeJS.Platform): string {
  const bin = platform === "win32" ? "Scripts" : "bin";
  return lib(platform).join(folder, ".venv", bin, executableName(SERVER_SCRIPT, platform));
}

/** Where pipx puts executables: `$PIPX_BIN_DIR`, and its default `~/.local/bin`. */
function pipxDirs(input: DiscoveryInput): string[] {
  const dirs: string[] = [];
  if (input.pipxBinDir !== undefined && input.pipxBinDir !== "") {
    dirs.push(input.pipxBinDir);
  }
  if (input.home !== undefined && input.home !== "") {
    const local = lib(input.platform).join(input.home, ".local", "bin");
    if (!dirs.includes(local)) {
      dirs.push(local);
    }
  }
  return dirs;
}

/** A workspace folder that is a CATO checkout (it has the install script), if any. */
async function checkoutIn(
  folders: readonly string[],
  input: DiscoveryInput,
  probes: Probes,
): Promise<string | undefined> {
  if (input.platform === "win32") {
    return undefined;
  }
  for (const folder of folders) {
    if (await probes.isExecutable(path.posix.join(folder, "scripts", "install"))) {
      return folder;
    }
  }
  return undefined;
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
      undefined,
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

/**
 * The command that installs the server where this search finds it, and works on a
 * distribution's Python too (no `pip install` into it, PEP 668): pipx, from the CATO
 * checkout open in the workspace when there is one, else from a checkout or wheel.
 */
export function installCommand(checkout: string | undefined): string {
  return `pipx install ${checkout === undefined ? "<a CATO checkout or cato_assistant wheel>" : quote(checkout)}`;
}

function quote(arg: string): string {
  return /^[\w./\\:-]+$/.test(arg) ? arg : JSON.stringify(arg);
}

function missing(detail: string, checkout: string | undefined): Discovery {
  const install = installCommand(checkout);
  return {
    found: false,
    installCommand: install,
    message:
      `The CATO language server (${SERVER_SCRIPT}) was not found: ${detail}. ` +
      `Install it with \`${install}\` (puts it in ~/.local/bin), or run \`scripts/install\` ` +
      "in a CATO checkout (makes its .venv), or set cato.server.command.",
  };
}
