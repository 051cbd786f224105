// Loads /dashboard of a running cato serve in headless Debian chromium (playwright-core):
// the token prompt (a wrong token refused, the right one kept in session storage only),
// then every chart has data; saves a screenshot.
//   node dashboard.mjs URL TOKEN SCREENSHOT
import { chromium } from "playwright-core";

const [url, token, screenshot] = process.argv.slice(2);
const CHARTS = ["sla", "latency", "replicas", "load", "users"];
const fail = (msg) => { console.error("dashboard test: " + msg); process.exit(1); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--headless=new"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("response", (r) => {
    const refused = r.status() === 401 && r.url().includes("/v1/status/history");
    if (r.status() >= 400 && !refused) errors.push(`HTTP ${r.status()} ${r.url()}`);
  });
  page.on("console", (m) => { if (m.type() === "error" && !m.text().includes("status of 401")) errors.push(m.text()); });

  await page.goto(url + "/dashboard");
  await page.locator("#login").waitFor({ state: "visible", timeout: 10000 });
  if (await page.locator("#charts").isVisible()) fail("charts shown before a token was given");

  await page.fill("#token", "not-the-token-at-all-000000");
  await page.click("#login button[type=submit]");
  await page.waitForFunction(() => document.getElementById("login-error").textContent.includes("refused"), null, { timeout: 10000 });

  await page.fill("#token", token);
  await page.click("#login button[type=submit]");
  await page.locator("#charts").waitFor({ state: "visible", timeout: 10000 });
  const stored = await page.evaluate(() => [sessionStorage.getItem("cato-token"), localStorage.length, document.cookie]);
  if (stored[0] !== token || stored[1] !== 0 || stored[2] !== "") fail("the token must be in session storage only: " + JSON.stringify(stored));

  // Every chart has points (refreshes come every interval): wait for the load's data.
  await page.waitForFunction(
    (charts) => charts.every((c) => Number(document.getElementById("chart-" + c).dataset.points || 0) > 0
      && document.querySelector("#chart-" + c + " canvas")),
    CHARTS, { timeout: 90000, polling: 500 },
  ).catch(async () => {
    // Live: the charts grow as the service takes samples (the load is still running).
  const before = await page.evaluate(() => window.catoCharts.load.data[0].length);
  await page.waitForFunction((n) => window.catoCharts.load.data[0].length > n, before, { timeout: 30000, polling: 500 })
    .catch(() => fail(`no new sample reached the page within 30 s (had ${before})`));
  const points = await page.evaluate((charts) => charts.map((c) => c + "=" + document.getElementById("chart-" + c).dataset.points), CHARTS);
    fail("not every chart has data: " + points.join(", "));
  });
  const points = await page.evaluate((charts) => Object.fromEntries(charts.map((c) => [c, Number(document.getElementById("chart-" + c).dataset.points)])), CHARTS);
  const events = await page.locator("#scale-events tbody tr").count();
  const users = await page.locator("#users tbody tr").count();
  if (users < 2) fail(`the users table has ${users} rows, expected alice and bob`);
  if (errors.length) fail("errors in the page: " + errors.join("; "));
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`dashboard test: points per chart ${JSON.stringify(points)}, ${events} scale events, ${users} users; screenshot ${screenshot}`);

  // A new tab of the same browser has no token: session storage is per tab.
  const other = await browser.newPage();
  await other.goto(url + "/dashboard");
  await other.locator("#login").waitFor({ state: "visible", timeout: 10000 });
} finally {
  await browser.close();
}
