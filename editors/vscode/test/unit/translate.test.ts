import { beforeEach, describe, expect, it } from "vitest";
import type * as vscode from "vscode";

import { pickTarget } from "../../src/commands";
import { rememberTarget, TARGET_LANGUAGES, translateTargets } from "../../src/translate";
import { mock } from "../mocks/vscode";

class Memento {
  readonly values = new Map<string, unknown>();
  keys(): readonly string[] {
    return [...this.values.keys()];
  }
  get<T>(key: string, fallback?: T): T {
    return (this.values.has(key) ? this.values.get(key) : fallback) as T;
  }
  update(key: string, value: unknown): Promise<void> {
    this.values.set(key, value);
    return Promise.resolve();
  }
}

describe("translateTargets", () => {
  it("offers every known language except the source's, in the list's order", () => {
    const picks = translateTargets("python");
    expect(picks.map((p) => p.language)).toEqual(
      TARGET_LANGUAGES.map((l) => l.id).filter((id) => id !== "python"),
    );
    expect(picks[0]).toEqual({ label: "JavaScript", description: "javascript", language: "javascript" });
  });

  it("puts recently used targets first, most recent on top, and marks them", () => {
    const picks = translateTargets("python", ["rust", "go"]);
    expect(picks.slice(0, 3).map((p) => p.language)).toEqual(["rust", "go", "javascript"]);
    expect(picks[0]?.description).toBe("rust (recent)");
    expect(picks[2]?.description).toBe("javascript");
  });

  it("puts preferred targets after recent ones, unknown ones included, without marking them recent", () => {
    const picks = translateTargets("python", ["go"], ["haskell", "rust", "go"]);
    expect(picks.slice(0, 3).map((p) => p.language)).toEqual(["go", "haskell", "rust"]);
    expect(picks[1]).toEqual({ label: "haskell", description: "haskell", language: "haskell" });
    expect(picks[2]?.description).toBe("rust");
    expect(picks.filter((p) => p.language === "go").length).toBe(1);
  });

  it("never offers the source language even when it was used recently", () => {
    expect(translateTargets("rust", ["rust", "go"], ["rust"]).map((p) => p.language)).not.toContain("rust");
  });

  it("remembers a bounded list without duplicates", () => {
    expect(rememberTarget(["go", "rust", "java"], "rust")).toEqual(["rust", "go", "java"]);
    expect(rememberTarget(["a", "b", "c"], "d", 3)).toEqual(["d", "a", "b"]);
  });
});

describe("pickTarget", () => {
  beforeEach(() => mock.reset());

  it("asks with the recent targets first, then remembers the choice", async () => {
    const state = new Memento();
    await state.update("cato.recentTargets", ["go"]);
    mock.quickPickAnswer = (items) => items.find((i) => (i as { language: string }).language === "rust");
    const picked = await pickTarget(state as unknown as vscode.Memento, "python");
    expect(picked).toBe("rust");
    const offered = mock.quickPicks[0]?.items as { language: string }[];
    expect(offered[0]?.language).toBe("go");
    expect(offered.map((i) => i.language)).not.toContain("python");
    expect(state.get("cato.recentTargets")).toEqual(["rust", "go"]);
  });

  it("offers the languages of the translateTargets setting before the rest", async () => {
    mock.settings.global["cato.translateTargets"] = ["kotlin"];
    await pickTarget(new Memento() as unknown as vscode.Memento, "python");
    const offered = mock.quickPicks[0]?.items as { language: string }[];
    expect(offered[0]?.language).toBe("kotlin");
  });

  it("returns nothing and remembers nothing when the pick is dismissed", async () => {
    const state = new Memento();
    mock.quickPickAnswer = () => undefined;
    expect(await pickTarget(state as unknown as vscode.Memento, "python")).toBeUndefined();
    expect(state.keys()).toEqual([]);
  });
});
