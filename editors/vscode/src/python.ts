/**
 * The interpreter selected in the Python extension (`ms-python.python`), when it is
 * installed: the environment the user works in is the likeliest home of `cato-lsp`.
 */
import * as vscode from "vscode";

export const PYTHON_EXTENSION_ID = "ms-python.python";

interface EnvironmentPath {
  readonly path: string;
}

interface ResolvedEnvironment {
  readonly executable?: { readonly uri?: vscode.Uri };
}

/** The parts of the Python extension's API used here; every member may be missing. */
export interface PythonExtensionApi {
  readonly environments?: {
    getActiveEnvironmentPath?(resource?: vscode.Uri): EnvironmentPath | undefined;
    resolveEnvironment?(env: EnvironmentPath | string): Promise<ResolvedEnvironment | undefined>;
  };
  readonly settings?: {
    getExecutionDetails?(resource?: vscode.Uri): { execCommand?: string[] | undefined };
  };
}

export async function pythonInterpreter(resource?: vscode.Uri): Promise<string | undefined> {
  const extension = vscode.extensions.getExtension<PythonExtensionApi>(PYTHON_EXTENSION_ID);
  if (extension === undefined) {
    return undefined;
  }
  try {
    const api = extension.isActive ? extension.exports : await extension.activate();
    return await interpreterFromApi(api, resource);
  } catch {
    return undefined;
  }
}

export async function interpreterFromApi(
  api: PythonExtensionApi | undefined,
  resource?: vscode.Uri,
): Promise<string | undefined> {
  const environments = api?.environments;
  const active = environments?.getActiveEnvironmentPath?.(resource);
  if (active !== undefined) {
    const resolved = await environments?.resolveEnvironment?.(active);
    return resolved?.executable?.uri?.fsPath ?? active.path;
  }
  return api?.settings?.getExecutionDetails?.(resource).execCommand?.[0];
}
