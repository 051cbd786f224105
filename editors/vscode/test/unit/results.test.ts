import { describe, expect, it } from "vitest";

import { answerConfiguration, documentSelector } from "../../src/clientOptions";
import { resultNotice } from "../../src/results";

describe("resultNotice", () => {
  it("tells about cancelled and unapplied results", () => {
    expect(resultNotice("cato.translateFile", { cancelled: true, applied: false })).toEqual({
      level: "info",
      text: "CATO: the translation was cancelled.",
    });
    expect(resultNotice("cato.summarize", { applied: false, summary: "x" })).toEqual({
      level: "warning",
      text: "CATO: the editor did not apply the summary.",
    });
  });

  it("lists problems of generated code and stays quiet on success", () => {
    const notice = resultNotice("cato.generate", { applied: true, diagnostics: ["line 2: invalid syntax"] });
    expect(notice?.level).toBe("warning");
    expect(notice?.text).toContain("1 problem(s): line 2: invalid syntax");
    expect(resultNotice("cato.generate", { applied: true, diagnostics: [] })).toBeUndefined();
    expect(resultNotice("cato.translateFile", { applied: true, uri: "file:///a.rs" })).toBeUndefined();
    expect(resultNotice("cato.summarize", null)).toBeUndefined();
  });
});

describe("documentSelector", () => {
  it("selects every language on disk and untitled for *", () => {
    expect(documentSelector(["*"])).toEqual([{ scheme: "file" }, { scheme: "untitled" }]);
    expect(documentSelector([])).toEqual([{ scheme: "file" }, { scheme: "untitled" }]);
  });

  it("selects the listed languages only", () => {
    expect(documentSelector(["python", "rust"])).toEqual([
      { scheme: "file", language: "python" },
      { scheme: "untitled", language: "python" },
      { scheme: "file", language: "rust" },
      { scheme: "untitled", language: "rust" },
    ]);
  });
});

describe("answerConfiguration", () => {
  it("answers the cato section with mapped settings and other sections as VS Code has them", async () => {
    const scopes: (string | undefined)[] = [];
    const answer = await answerConfiguration(
      { items: [{ section: "editor" }, { section: "cato", scopeUri: "file:///w/a.py" }] },
      (scopeUri) => {
        scopes.push(scopeUri);
        return Promise.resolve({ debounceMs: 10 });
      },
      () => Promise.resolve([{ tabSize: 4 }, { server: { command: [] } }]),
    );
    expect(answer).toEqual([{ tabSize: 4 }, { debounceMs: 10 }]);
    expect(scopes).toEqual(["file:///w/a.py"]);
  });

  it("does not ask VS Code when only the cato section is wanted", async () => {
    let asked = false;
    const answer = await answerConfiguration(
      { items: [{ section: "cato" }] },
      () => Promise.resolve({}),
      () => {
        asked = true;
        return Promise.resolve([]);
      },
    );
    expect(answer).toEqual([{}]);
    expect(asked).toBe(false);
  });
});
