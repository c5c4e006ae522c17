// Drives the embedded dashboard in headless Chromium (playwright-core, Debian's chromium):
// the page must list `expect` as the riskiest client, and its drill-down must draw all its
// charts. With an operator token, an action from the drill-down: refused with the read
// token, then taken with the operator's, listed under Enforcement and in the audit log.
// Saves a screenshot. Usage: NODE_PATH=... node tests/dashboard.cjs URL TOKEN EXPECT SCREENSHOT [OPERATOR_TOKEN]
const { launch, page: newPage } = require("./browser.cjs");

(async () => {

const [url, token, expect, shot, operator] = process.argv.slice(2);
const browser = await launch();
try {
  const page = await newPage(browser);
  await page.goto(`${url}/#token=${encodeURIComponent(token)}`);
  const first = page.locator("#clients tbody tr").first();
  await first.waitFor({ timeout: 15000 });
  const who = await first.getAttribute("data-client");
  if (who !== expect) throw new Error(`first client is ${who}, not ${expect}`);
  // The alert queue: the attacker's open alert first, with its evidence in words; a filter
  // goes into the URL, and a URL with a filter opens filtered.
  const top = page.locator("#queue tbody tr").first();
  await top.waitFor({ timeout: 15000 });
  const cells = await top.locator("td").allTextContents();
  if ((await top.getAttribute("data-client")) !== expect || cells[0] !== "open")
    throw new Error(`queue starts with ${cells}`);
  if (!/\d/.test(cells[9]) || !/ago$/.test(cells[6])) throw new Error(`queue row has no reason or time: ${cells}`);
  await page.selectOption("#f-kind", "boundary_probe");
  await page.waitForFunction(() => location.search.includes("kind=boundary_probe"));
  await page.goto(`${url}/?kind=extraction#token=${encodeURIComponent(token)}`);
  await page.locator("#queue tbody tr").first().waitFor({ timeout: 15000 });
  if ((await page.inputValue("#f-kind")) !== "extraction") throw new Error("the URL's filter was not applied");
  const kinds = await page.locator("#queue tbody tr td:nth-child(3)").allTextContents();
  if (kinds.some((k) => k !== "extraction")) throw new Error(`filtered queue lists ${kinds}`);
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
  if (operator) {
    const result = page.locator("#act-result");
    await page.fill("#why", "extraction confirmed by the SOC");
    await page.click('#actions button[data-act="block"]');
    await page.waitForFunction(() => document.getElementById("act-result").textContent !== "");
    if ((await result.getAttribute("class")) !== "failed" || !/read but not act/.test(await result.textContent()))
      throw new Error(`a read token acted: ${await result.textContent()}`);
    await page.fill("#token", operator);
    await page.click('#actions button[data-act="block"]');
    await page.waitForFunction(() => /^done/.test(document.getElementById("act-result").textContent), null, { timeout: 10000 });
    const flagged = page.locator("#flagged tbody tr").first();
    await flagged.waitFor({ timeout: 10000 });
    const cells = await flagged.locator("td").allTextContents();
    if (cells[0] !== expect || cells[1] !== "block") throw new Error(`enforcement lists ${cells}`);
    const audit = await page.locator("#audit tbody tr").first().locator("td").allTextContents();
    if (audit[2] !== "block" || audit[5] !== "extraction confirmed by the SOC") throw new Error(`audit lists ${audit}`);
  }
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`dashboard ok: queue led by ${expect}, ${who} first, ${dots} alert events, ${rows} alerts in drill-down${operator ? ", blocked from the page" : ""}`);
} finally {
  await browser.close();
}
})().catch((e) => { console.error(e.message); process.exit(1); });
