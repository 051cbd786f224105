import { beforeEach, describe, expect, it } from "vitest";
import * as vscode from "vscode";

import { interpreterFromApi, pythonInterpreter } from "../../src/python";
import { mock } from "../mocks/vscode";

describe("the Python extension's interpreter", () => {
  beforeEach(() => mock.reset());

  it("prefers the resolved executable of the active environment (conda envs are folders)", async () => {
    const api = {
      environments: {
        getActiveEnvironmentPath: () => ({ path: "/opt/conda/envs/cato" }),
        resolveEnvironment: () =>
          Promise.resolve({ executable: { uri: vscode.Uri.file("/opt/conda/envs/cato/bin/python") } }),
      },
    };
    expect(await interpreterFromApi(api)).toBe("/opt/conda/envs/cato/bin/python");
  });

  it("falls back to the environment path, then to the legacy execution details", async () => {
    expect(
      await interpreterFromApi({ environments: { getActiveEnvironmentPath: () => ({ path: "/v/python" }) } }),
    ).toBe("/v/python");
    const legacy = {
      settings: { getExecutionDetails: () => ({ execCommand: ["/usr/bin/python3.11", "-X"] }) },
    };
    expect(await interpreterFromApi(legacy)).toBe("/usr/bin/python3.11");
    expect(await interpreterFromApi(undefined)).toBeUndefined();
  });

  it("activates the extension when needed and gives up quietly when it fails", async () => {
    let activated = false;
    mock.extensions.set("ms-python.python", {
      isActive: false,
      activate: () => {
        activated = true;
        return Promise.resolve({ environments: { getActiveEnvironmentPath: () => ({ path: "/a/python" }) } });
      },
    });
    expect(await pythonInterpreter()).toBe("/a/python");
    expect(activated).toBe(true);
    mock.extensions.set("ms-python.python", {
      isActive: false,
      activate: () => Promise.reject(new Error("x")),
    });
    expect(await pythonInterpreter()).toBeUndefined();
    mock.extensions.clear();
    expect(await pythonInterpreter()).toBeUndefined();
  });
});
