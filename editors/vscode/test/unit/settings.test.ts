import { readFileSync } from "node:fs";
import * as path from "node:path";

import { beforeEach, describe, expect, it } from "vitest";
import * as vscode from "vscode";

import {
  CLIENT_KEYS,
  configuredCommand,
  removedKeys,
  resolvePath,
  RESTART_KEYS,
  SERVER_KEYS,
  serverSettings,
  touches,
} from "../../src/settings";
import { settingReader } from "../../src/vscodeSettings";
import { mock } from "../mocks/vscode";

interface Manifest {
  capabilities: { untrustedWorkspaces: { restrictedConfigurations: string[] } };
  contributes: { configuration: { properties: Record<string, { default?: unknown; scope?: string }> } };
}

const manifest = JSON.parse(
  readFileSync(path.join(__dirname, "..", "..", "package.json"), "utf8"),
) as Manifest;
const contributed = manifest.contributes.configuration.properties;
const restricted = manifest.capabilities.untrustedWorkspaces.restrictedConfigurations;
const paths = { home: "/home/dev", workspaceFolder: "/srv/project" };

function reader(values: Record<string, unknown>): (key: string) => unknown {
  return (key) => values[key];
}

describe("serverSettings", () => {
  it("sends nothing when the user set nothing, so the server's defaults apply", () => {
    expect(serverSettings(reader({}), undefined, paths)).toEqual({});
  });

  it("nests dotted keys the way the server's settings model reads them", () => {
    const settings = serverSettings(
      reader({
        mode: "remote",
        url: "http://127.0.0.1:8000",
        "tasks.complete.model": "codellama-7b",
        "tasks.complete.fimFamily": "codellama",
        "tasks.complete.slaMs": 400,
        "tasks.translate.maxTokens": 2048,
        debounceMs: 30,
        "context.budgetTokens": 2048,
        "context.prefixShare": 0.6,
        languages: ["python", "rust"],
      }),
      undefined,
      paths,
    );
    expect(settings).toEqual({
      mode: "remote",
      url: "http://127.0.0.1:8000",
      tasks: {
        complete: { model: "codellama-7b", fimFamily: "codellama", slaMs: 400 },
        translate: { maxTokens: 2048 },
      },
      debounceMs: 30,
      context: { budgetTokens: 2048, prefixShare: 0.6 },
      languages: ["python", "rust"],
    });
  });

  it("drops empty strings and nulls, which the server would reject", () => {
    const settings = serverSettings(
      reader({ config: "  ", url: "", token: "", "tasks.complete.slaMs": null, user: "ana" }),
      undefined,
      paths,
    );
    expect(settings).toEqual({ user: "ana" });
  });

  it("never sends client-only keys", () => {
    const values: Record<string, unknown> = { "server.command": ["cato-lsp"], "trace.server": "verbose" };
    expect(serverSettings(reader(values), undefined, paths)).toEqual({});
  });

  it("prefers the keychain token over the plain-text setting", () => {
    expect(serverSettings(reader({ token: "from-settings" }), "from-keychain", paths)).toEqual({
      token: "from-keychain",
    });
    expect(serverSettings(reader({ token: "from-settings" }), undefined, paths)).toEqual({
      token: "from-settings",
    });
  });

  it("resolves the config path against the workspace folder", () => {
    const settings = serverSettings(reader({ config: "conf/cato.toml" }), undefined, paths);
    expect(settings).toEqual({ config: path.join("/srv/project", "conf/cato.toml") });
  });
});

describe("removedKeys", () => {
  it("lists the leaves set before and missing now, nested ones by their dotted key", () => {
    const before = {
      url: "http://a",
      token: "t",
      tasks: { complete: { model: "m", slaMs: 300 } },
      languages: ["*"],
    };
    const after = { url: "http://b", tasks: { complete: { model: "m" } }, languages: ["python"] };
    expect(removedKeys(before, after)).toEqual(["token", "tasks.complete.slaMs"]);
    expect(removedKeys(after, before)).toEqual([]);
  });
});

describe("resolvePath", () => {
  it("expands ~ and ${workspaceFolder} and keeps absolute paths", () => {
    expect(resolvePath("~/cato.toml", paths)).toBe(path.join("/home/dev", "cato.toml"));
    expect(resolvePath("${workspaceFolder}/x.toml", paths)).toBe("/srv/project/x.toml");
    expect(resolvePath("/etc/cato.toml", paths)).toBe("/etc/cato.toml");
  });

  it("leaves a relative path alone without a workspace folder", () => {
    expect(resolvePath("cato.toml", { home: "/h", workspaceFolder: undefined })).toBe("cato.toml");
  });
});

describe("configuredCommand", () => {
  it("accepts an array or a blank-separated string", () => {
    expect(configuredCommand(["python3", "-m", "cato_lsp"])).toEqual(["python3", "-m", "cato_lsp"]);
    expect(configuredCommand("  python3 -m  cato_lsp ")).toEqual(["python3", "-m", "cato_lsp"]);
    expect(configuredCommand(undefined)).toEqual([]);
    expect(configuredCommand([1, "", "cato-lsp"])).toEqual(["cato-lsp"]);
  });
});

describe("settingReader (VS Code)", () => {
  beforeEach(() => mock.reset());

  it("returns only user-set values, the workspace over the user's", () => {
    mock.defaults["cato.debounceMs"] = 75;
    mock.settings.global["cato.mode"] = "remote";
    mock.settings.global["cato.url"] = "http://a:1";
    mock.settings.workspace["cato.url"] = "http://b:2";
    const read = settingReader(vscode.Uri.file("/srv/project/a.py"));
    expect(read("debounceMs")).toBeUndefined();
    expect(read("mode")).toBe("remote");
    expect(read("url")).toBe("http://b:2");
  });
});

describe("package.json contributes", () => {
  it("declares exactly the server keys plus the client-only keys", () => {
    const declared = Object.keys(contributed)
      .map((k) => k.replace(/^cato\./, ""))
      .sort();
    expect(declared).toEqual([...SERVER_KEYS, ...CLIENT_KEYS].sort());
  });

  it("keeps secrets out of workspace settings, and executables out of untrusted ones", () => {
    // window: read from User settings in every window, remote ones too (VS Code drops
    // machine and machine-overridable values of the local User settings in a remote
    // window, such as code-server's), and from a workspace only when it is trusted
    // (restricted below)
    expect(contributed["cato.server.command"]?.scope).toBe("window");
    expect(restricted).toContain("cato.server.command");
    expect(contributed["cato.token"]?.scope).toBe("machine");
  });

  it("restarts on a change of the server command or the languages only", () => {
    const changed = new Set(["cato.languages"]);
    expect(touches((s) => changed.has(s), RESTART_KEYS)).toBe(true);
    expect(touches((s) => s === "cato.debounceMs", RESTART_KEYS)).toBe(false);
  });
});
