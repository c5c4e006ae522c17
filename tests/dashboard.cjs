// Drives the embedded dashboard in headless Chromium (playwright-core, Debian's chromium):
// the page must list `expect` as the riskiest client, and its drill-down must draw all four
// charts. Saves a screenshot. Usage: NODE_PATH=... node tests/dashboard.cjs URL TOKEN EXPECT SCREENSHOT
const { chromium } = require("playwright-core");

(async () => {

const [url, token, expect, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("pageerror", (e) => { console.error("page error:", e.message); process.exitCode = 1; });
  await page.goto(`${url}/#token=${encodeURIComponent(token)}`);
  const first = page.locator("#clients tbody tr").first();
  await first.waitFor({ timeout: 15000 });
  const who = await first.getAttribute("data-client");
  if (who !== expect) throw new Error(`first client is ${who}, not ${expect}`);
  const dots = Number(await page.locator("#timeline").getAttribute("data-points"));
  if (!(dots > 0)) throw new Error("alert timeline is empty");
  await first.click();
  for (const c of ["rate", "margin", "neardup", "coverage", "score"]) {
    const svg = page.locator(`svg[data-chart="${c}"]`);
    await svg.locator("rect, path").first().waitFor({ state: "attached", timeout: 10000 });
    const n = Number(await svg.getAttribute("data-points"));
    if (!(n > 0)) throw new Error(`chart ${c} has no points`);
  }
  const rows = await page.locator("#client-alerts tbody tr").count();
  if (rows < 1) throw new Error("drill-down lists no alerts");
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`dashboard ok: ${who} first, ${dots} alert events, ${rows} alerts in drill-down`);
} finally {
  await browser.close();
}
})().catch((e) => { console.error(e.message); process.exit(1); });
