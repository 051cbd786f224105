// Helpers that drive the VS Code workbench served by code-server from headless chromium
// (playwright-core): the command palette, the quick pick, the editor, the status bar,
// notifications and inline suggestions (ghost text), as VS Code 1.139 renders them.
import fs from "node:fs";
import path from "node:path";

/** The CATO status-bar item: `<publisher>.<extension>.<item id>` (src/statusBar.ts). */
export const STATUS_ITEM = '[id="cato-assistant.cato-vscode.cato.status"]';

export class Workbench {
  constructor(page, screenshotDir) {
    this.page = page;
    this.screenshotDir = screenshotDir;
    this.shots = [];
  }

  log(message) {
    console.log(`vscode-e2e: ${message}`);
  }

  async screenshot(name) {
    const file = path.join(this.screenshotDir, `${name}.png`);
    await this.page.screenshot({ path: file });
    this.shots.push(file);
    return file;
  }

  /** Opens `folder` in the workbench and waits until it is laid out. */
  async open(baseUrl, folder) {
    await this.page.goto(`${baseUrl}/?folder=${encodeURIComponent(folder)}`);
    await this.page.locator(".monaco-workbench").waitFor({ state: "visible", timeout: 90_000 });
    await this.page.locator(".explorer-folders-view").waitFor({ state: "visible", timeout: 90_000 });
  }

  /** Opens a file of the workspace by clicking it in the Explorer. */
  async openFile(name) {
    const row = this.page.locator(`.explorer-folders-view .monaco-list-row[aria-label="${name}"]`);
    await row.waitFor({ state: "visible", timeout: 30_000 });
    await row.click();
    await this.activeTab(name, 30_000);
    await this.page
      .locator(".editor-instance .monaco-editor .view-lines")
      .first()
      .waitFor({ timeout: 30_000 });
  }

  /** Waits until the editor tab of `name` is the active one. */
  async activeTab(name, timeout) {
    await this.page.locator(`.tabs-container .tab.active[aria-label^="${name}"]`).waitFor({ timeout });
  }

  /** Focuses the active editor's text (a click on it, then Ctrl+End). */
  async focusEditorEnd() {
    await this.page.locator(".editor-instance .monaco-editor .view-lines").first().click();
    await this.page.keyboard.press("Control+End");
  }

  /** Waits until an editor has the keyboard focus and something on screen names `title`. */
  async focusedEditor(title, timeout) {
    await this.page.getByText(title, { exact: true }).first().waitFor({ state: "visible", timeout });
    await this.page.waitForFunction(() => document.activeElement?.closest(".monaco-editor") != null, null, {
      timeout,
    });
  }

  /** Replaces the focused editor's whole text by pasting `text` (the system clipboard). */
  async replaceEditorText(text) {
    await this.page.context().grantPermissions(["clipboard-read", "clipboard-write"]);
    await this.page.evaluate((t) => navigator.clipboard.writeText(t), text);
    await this.page.keyboard.press("Control+a");
    await this.page.keyboard.press("Control+v");
  }

  /** The status-bar item's text and whether it spins (the server is still starting). */
  async status() {
    const item = this.page.locator(STATUS_ITEM);
    if ((await item.count()) === 0) {
      return { text: "(no CATO status item)", spinning: false, icons: [] };
    }
    const text = ((await item.textContent()) ?? "").trim();
    const icons = await item.locator(".codicon").evaluateAll((els) => els.map((e) => e.className));
    return { text, spinning: icons.some((c) => c.includes("spin")), icons };
  }

  /** Waits until `check(status)` holds; `what` names it for the error. */
  async waitStatus(check, timeoutMs, what) {
    const deadline = Date.now() + timeoutMs;
    let last = await this.status();
    while (!check(last)) {
      if (Date.now() > deadline) {
        throw new Error(`the status bar did not ${what} within ${timeoutMs / 1000} s (last: "${last.text}")`);
      }
      await this.page.waitForTimeout(500);
      last = await this.status();
    }
    return last;
  }

  /** Waits for `CATO r/t` with r >= 1 (statusText.ts: ready replicas of the total). */
  async waitReady(timeoutMs) {
    const ready = (s) => {
      const m = /CATO (\d+)\/(\d+)/.exec(s.text);
      return m !== null && Number(m[1]) >= 1 && !s.spinning;
    };
    return (await this.waitStatus(ready, timeoutMs, "say ready")).text;
  }

  /** Runs a command by its palette title (F1, type, pick the exact row). */
  async runCommand(title) {
    await this.page.keyboard.press("F1");
    const input = this.page.locator(".quick-input-widget .quick-input-box input");
    await input.waitFor({ state: "visible", timeout: 10_000 });
    await input.fill(`>${title}`);
    const row = this.page.locator(`.quick-input-widget .monaco-list-row[aria-label^="${title}"]`).first();
    await row.waitFor({ state: "visible", timeout: 10_000 });
    await row.click();
  }

  /** Picks `label` in an open quick pick (e.g. the target language). */
  async pick(label, timeoutMs) {
    const input = this.page.locator(".quick-input-widget .quick-input-box input");
    await input.waitFor({ state: "visible", timeout: timeoutMs });
    await input.fill(label);
    const row = this.page.locator(`.quick-input-widget .monaco-list-row[aria-label^="${label}"]`).first();
    await row.waitFor({ state: "visible", timeout: timeoutMs });
    await row.click();
  }

  /** Goes to a 1-based line of the active editor (Ctrl+G). */
  async gotoLine(line) {
    await this.page.keyboard.press("Control+g");
    const input = this.page.locator(".quick-input-widget .quick-input-box input");
    await input.waitFor({ state: "visible", timeout: 10_000 });
    await input.fill(`:${line}`);
    await this.page.keyboard.press("Enter");
    await input.waitFor({ state: "hidden", timeout: 10_000 });
  }

  /** The inline suggestion on screen: the part after the cursor and the lines below it. */
  // VS Code 1.139 renders the part on the cursor's line as spans with a `ghost-text*`
  // class among the editor's lines, and the lines below it as `.view-line`s of ghost
  // spans in a view zone (`.suggest-preview-text`).
  async ghostText() {
    const { inline, block } = await this.page
      .locator(".editor-instance .monaco-editor")
      .first()
      .evaluate((editor) => {
        const text = (el) => el.textContent.replace(/\u00a0/g, " ");
        const ghostly = (el) => [...el.classList].some((c) => c.startsWith("ghost-text"));
        const top = [...editor.querySelectorAll(".view-lines [class*=ghost-text]")].filter(
          (el) => ghostly(el) && !(el.parentElement && el.parentElement.closest("[class*=ghost-text]")),
        );
        const lines = [...editor.querySelectorAll(".view-zones .view-line")].filter((l) =>
          l.querySelector(".ghost-text"),
        );
        return { inline: top.map(text).join(""), block: lines.map(text) };
      });
    return { inline, block, shown: inline.trim() !== "" || block.join("").trim() !== "" };
  }

  async waitGhost(timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const ghost = await this.ghostText();
      if (ghost.shown) {
        return ghost;
      }
      await this.page.waitForTimeout(200);
    }
    throw new Error(`no ghost text within ${timeoutMs / 1000} s`);
  }

  /** The lines the active editor shows (what is on screen, top to bottom). */
  async visibleLines() {
    return this.page
      .locator(".editor-instance .monaco-editor .view-lines")
      .first()
      .evaluate((el) =>
        [...el.querySelectorAll(".view-line")]
          .sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top))
          .map((l) => l.textContent.replace(/\u00a0/g, " ")),
      );
  }

  /** Texts of the notification toasts on screen. */
  async notifications() {
    return this.page.locator(".notifications-toasts .notification-toast").allTextContents();
  }

  /** Waits for a toast whose text contains every string of `needles`. */
  async waitNotification(needles, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    let seen = [];
    while (Date.now() < deadline) {
      seen = await this.notifications();
      const hit = seen.find((t) => needles.every((n) => t.includes(n)));
      if (hit !== undefined) {
        return hit;
      }
      await this.page.waitForTimeout(500);
    }
    throw new Error(
      `no notification with ${JSON.stringify(needles)} within ${timeoutMs / 1000} s; seen: ${JSON.stringify(seen)}`,
    );
  }
}

/** Polls a file until `check(text)` holds; returns its text. */
export async function waitFile(file, check, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let text;
  while (Date.now() < deadline) {
    text = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : undefined;
    if (text !== undefined && check(text)) {
      return text;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(
    `${what} within ${timeoutMs / 1000} s; ${file} holds ${text === undefined ? "nothing (missing)" : JSON.stringify(text)}`,
  );
}

/** Text without the blanks at the end of each line (non-breaking spaces as spaces). */
export function trimLineEnds(text) {
  return text
    .replace(/\u00a0/g, " ")
    .split("\n")
    .map((line) => line.trimEnd())
    .join("\n");
}

/** The newest window's CATO output (the extension's log file under the user data). */
export function catoOutput(userData) {
  const logs = [];
  const walk = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) {
        walk(full);
      } else if (entry.name === "CATO.log" && full.includes("cato-assistant.cato-vscode")) {
        logs.push(full);
      }
    }
  };
  walk(path.join(userData, "logs"));
  logs.sort((a, b) => fs.statSync(a).mtimeMs - fs.statSync(b).mtimeMs);
  return logs.length === 0 ? "(no CATO output yet)" : fs.readFileSync(logs[logs.length - 1], "utf8");
}
