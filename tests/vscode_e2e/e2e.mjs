// The CATO extension in real VS Code: code-server (the .vsix installed, User settings
// pointing cato.server.command at the project's cato-lsp, the default embedded engine
// over emulated replicas) driven through headless Debian chromium by playwright-core.
// Run by scripts/test-vscode-e2e, which starts code-server and passes, in the environment:
//   CODE_SERVER_URL  the workbench (auth none, 127.0.0.1)
//   WORKSPACE        an empty folder to open (this test writes stats.py into it)
//   USER_DATA        code-server's user data folder: User/settings.json (rewritten for the
//                    wrong-path step) and logs/ (the extension's CATO output)
//   SCREENSHOT_DIR   where each step's screenshot goes
//   CHROMIUM         the browser (default /usr/bin/chromium)
// Steps: wait for the status bar to say ready (the server started from the setting);
// type a function header, wait for the ghost text, Tab, save, check the file on disk
// holds exactly what was shown; Summarize (a docstring, or a comment where the file does
// not parse, appears and is saved); Translate File... to JavaScript (stats.js written
// next to it, with content, and opened); then a wrong cato.server.command (changed in the
// User settings editor, then a fresh window) gives an error that names the value set;
// and a cato-lsp that exits as it starts gives an error with the last line it printed.
import fs from "node:fs";
import path from "node:path";

import { chromium } from "playwright-core";

import { catoOutput, trimLineEnds, waitFile, Workbench } from "./workbench.mjs";

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`vscode-e2e: ${name} is not set (run scripts/test-vscode-e2e)`);
    process.exit(2);
  }
  return value;
};
const baseUrl = env("CODE_SERVER_URL");
const workspace = env("WORKSPACE");
const userData = env("USER_DATA");
const userSettings = path.join(userData, "User", "settings.json");
const screenshotDir = env("SCREENSHOT_DIR");

const SOURCE = path.join(workspace, "stats.py");
const TRANSLATED = path.join(workspace, "stats.js");
const ORIGINAL = [
  "import math",
  "",
  "",
  "def mean(values):",
  "    return sum(values) / len(values)",
  "",
  "",
  "def spread(values):",
  "    centre = mean(values)",
  "    return math.sqrt(sum((v - centre) ** 2 for v in values) / len(values))",
  "",
  "",
  "",
].join("\n");
const HEADER = "def fibonacci(n):";
const MEAN_BODY_LINE = 5; // `    return sum(values) / len(values)`

/** How mean() got its summary in `lines`: "docstring", "comment", or undefined (none yet). */
function summaryForm(lines) {
  const def = lines.indexOf("def mean(values):");
  if (def < 0) {
    return undefined;
  }
  if ((lines[def + 1] ?? "").startsWith('    """')) {
    return "docstring";
  }
  return def > 0 && lines[def - 1].startsWith("# ") ? "comment" : undefined;
}

fs.mkdirSync(screenshotDir, { recursive: true });
fs.mkdirSync(workspace, { recursive: true });
fs.writeFileSync(SOURCE, ORIGINAL);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--headless=new"],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(String(e)));
const bench = new Workbench(page, screenshotDir);
const timings = {};
let current = "start";

async function step(name, run) {
  current = name;
  const t0 = Date.now();
  bench.log(`step: ${name}`);
  const result = await run();
  timings[name] = Date.now() - t0;
  return result;
}

try {
  await step("open the workspace", async () => {
    await bench.open(baseUrl, workspace);
    await bench.openFile("stats.py");
    await bench.screenshot("01-workspace");
  });

  const ready = await step("status bar says ready", async () => {
    const text = await bench.waitReady(120_000);
    await bench.screenshot("02-ready");
    // The server is the one the User setting names, not one found elsewhere.
    const command = JSON.parse(fs.readFileSync(userSettings, "utf8"))["cato.server.command"];
    const output = catoOutput(userData);
    if (!output.includes(`starting ${command.join(" ")} (found via setting)`)) {
      throw new Error(
        `the extension did not start ${JSON.stringify(command)} (cato.server.command); its output:\n${output}`,
      );
    }
    return text;
  });
  bench.log(`status bar: "${ready}"`);

  const ghost = await step("type a header, ghost text appears", async () => {
    await bench.focusEditorEnd();
    await page.keyboard.type(HEADER, { delay: 30 });
    const shown = await bench.waitGhost(30_000);
    await bench.screenshot("03-ghost-text");
    return shown;
  });
  bench.log(`ghost text: inline ${JSON.stringify(ghost.inline)}, lines below ${JSON.stringify(ghost.block)}`);

  const accepted = await step("Tab accepts, the saved file holds it", async () => {
    await page.keyboard.press("Tab");
    await page.waitForTimeout(300);
    await page.keyboard.press("Control+s");
    // What was shown: the rest of the header's line, then the lines below it.
    const shownText = [ghost.inline, ...ghost.block].join("\n");
    const text = await waitFile(
      SOURCE,
      (t) => t.startsWith(ORIGINAL + HEADER) && t.length > (ORIGINAL + HEADER).length,
      15_000,
      "the accepted suggestion was not saved",
    );
    const added = text.slice((ORIGINAL + HEADER).length);
    // Exactly, indentation included (the screen may drop trailing blanks of a line).
    if (trimLineEnds(added) !== trimLineEnds(shownText)) {
      throw new Error(
        `the file got ${JSON.stringify(added)} after the header, the ghost text showed ${JSON.stringify(shownText)}`,
      );
    }
    await bench.screenshot("04-accepted-and-saved");
    return added;
  });
  bench.log(`saved after the header: ${JSON.stringify(accepted)}`);

  await step("Summarize documents mean()", async () => {
    await bench.gotoLine(MEAN_BODY_LINE);
    await bench.runCommand("CATO: Summarize");
    // The server applies the edit: a docstring below `def mean(values):`, or, where the
    // file does not parse (the accepted suggestion may end mid-statement), comment lines
    // above it (cato_lsp/features/commands.py).
    const deadline = Date.now() + 90_000;
    let form;
    let lines = [];
    while (form === undefined && Date.now() < deadline) {
      lines = await bench.visibleLines();
      form = summaryForm(lines);
      if (form === undefined) {
        await page.waitForTimeout(250);
      }
    }
    if (form === undefined) {
      throw new Error(`no summary around def mean() within 90 s: ${JSON.stringify(lines)}`);
    }
    await bench.screenshot("05-summarized");
    await page.keyboard.press("Control+s");
    const text = await waitFile(
      SOURCE,
      (t) => summaryForm(t.split("\n")) === form,
      15_000,
      `the ${form} was not saved`,
    );
    const def = text.split("\n").indexOf("def mean(values):");
    const around =
      form === "docstring"
        ? text.split("\n").slice(def + 1, def + 4)
        : text.split("\n").slice(Math.max(0, def - 3), def);
    bench.log(`summary saved as a ${form}: ${JSON.stringify(around)}`);
  });

  await step("Translate File... to JavaScript writes stats.js", async () => {
    await bench.runCommand("CATO: Translate File...");
    await bench.pick("JavaScript", 15_000);
    const text = await waitFile(TRANSLATED, (t) => t.trim() !== "", 90_000, "no translation on disk");
    await bench.activeTab("stats.js", 30_000);
    await page.waitForTimeout(500);
    await bench.screenshot("06-translated");
    bench.log(`stats.js on disk: ${text.length} characters, ${text.split("\n").length - 1} lines`);
  });

  const bad = path.join(workspace, "no-such-folder", "cato-lsp");
  await step("a wrong cato.server.command: the error names it", async () => {
    // As a user does it: User settings (JSON) in the editor, the new value pasted, saved.
    // A change of this setting restarts the server, which looks the command up at once.
    const settings = JSON.parse(fs.readFileSync(userSettings, "utf8"));
    settings["cato.server.command"] = [bad];
    await bench.runCommand("Preferences: Open User Settings (JSON)");
    await bench.focusedEditor("settings.json", 30_000); // VS Code 1.139: a modal editor
    await bench.replaceEditorText(JSON.stringify(settings, null, 2) + "\n");
    await page.keyboard.press("Control+s");
    await waitFile(
      userSettings,
      (t) => t.includes(JSON.stringify(bad)),
      15_000,
      "the settings were not saved",
    );
    const text = await bench.waitNotification(
      [`cato.server.command setting names ${JSON.stringify(bad)}`],
      60_000,
    );
    bench.log(`error after the settings change: ${JSON.stringify(text)}`);
    await bench.screenshot("07-wrong-path-changed");
  });

  await step("a fresh window with the wrong path: the same error", async () => {
    await page.reload();
    await page.locator(".monaco-workbench").waitFor({ state: "visible", timeout: 90_000 });
    const text = await bench.waitNotification(
      [`cato.server.command setting names ${JSON.stringify(bad)}`],
      90_000,
    );
    const status = await bench.waitStatus(
      (s) => s.text.includes("stopped") && !s.spinning,
      30_000,
      "say the server stopped",
    );
    bench.log(`error in a fresh window: ${JSON.stringify(text)}; status bar: "${status.text}"`);
    await bench.screenshot("08-wrong-path-new-window");
  });

  await step("a server that exits as it starts: the error shows its last line", async () => {
    // A cato-lsp that fails as a broken install does: a traceback on stderr, exit 1.
    const broken = path.join(workspace, "broken-venv", "cato-lsp");
    fs.mkdirSync(path.dirname(broken), { recursive: true });
    fs.writeFileSync(
      broken,
      [
        "#!/bin/sh",
        "echo 'Traceback (most recent call last):' >&2",
        "echo \"ModuleNotFoundError: No module named 'pygls'\" >&2",
        "exit 1",
        "",
      ].join("\n"),
      { mode: 0o755 },
    );
    const settings = JSON.parse(fs.readFileSync(userSettings, "utf8"));
    settings["cato.server.command"] = [broken];
    fs.writeFileSync(userSettings, JSON.stringify(settings, null, 2) + "\n");
    await page.reload();
    await page.locator(".monaco-workbench").waitFor({ state: "visible", timeout: 90_000 });
    const text = await bench.waitNotification(
      ["the language server did not start: ModuleNotFoundError: No module named 'pygls'"],
      90_000,
    );
    bench.log(`error for a server that exits: ${JSON.stringify(text.slice(0, 200))}`);
    await bench.screenshot("09-server-exits");
  });

  if (pageErrors.length > 0) {
    bench.log(`errors in the page (not failing the test): ${pageErrors.slice(0, 5).join("; ")}`);
  }
  bench.log(`passed; step times (ms): ${JSON.stringify(timings)}`);
  bench.log(`screenshots: ${bench.shots.join(", ")}`);
} catch (error) {
  console.error(`vscode-e2e: FAILED at "${current}": ${error instanceof Error ? error.message : error}`);
  try {
    const shot = await bench.screenshot(`failed-${current.replace(/[^a-z0-9]+/gi, "-")}`);
    console.error(`vscode-e2e: screenshot of the failure: ${shot}`);
    console.error(`vscode-e2e: status bar: ${JSON.stringify(await bench.status())}`);
    console.error(`vscode-e2e: notifications: ${JSON.stringify(await bench.notifications())}`);
    console.error(`vscode-e2e: editor lines: ${JSON.stringify(await bench.visibleLines().catch(() => []))}`);
    console.error(`vscode-e2e: the CATO output, last lines:\n${catoOutput(userData).slice(-3000)}`);
  } catch (inner) {
    console.error(`vscode-e2e: (could not record the failure: ${inner})`);
  }
  process.exitCode = 1;
} finally {
  await browser.close();
}
