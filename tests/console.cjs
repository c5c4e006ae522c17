// Drives the console in headless Chromium (playwright-core, Debian's chromium) as an analyst
// would: queue, filters, client page, campaign page, keyboard, live alerts; screenshots
// light and dark. Usage: NODE_PATH=... PW_SEND_LIVE='[cmd, args...]' node tests/console.cjs URL TOKEN SHOT_DIR
const { launch, page: newPage } = require("./browser.cjs");
const { execFileSync } = require("child_process");

const [url, token, dir] = process.argv.slice(2);
const fail = (m) => { throw new Error(m); };
const open = (page, query = "") => page.goto(`${url}/${query}#token=${encodeURIComponent(token)}`);
// Waits until the queue shows the filters now in the URL (it re-renders after a fetch).
const settled = (page) => page.waitForFunction(() => {
  const q = new URLSearchParams(location.search); q.delete("client"); q.delete("client_model");
  const v = new URLSearchParams(document.getElementById("queue").dataset.view || ""); v.delete("client"); v.delete("client_model");
  return document.getElementById("queue").dataset.view !== undefined && q.toString() === v.toString();
});

(async () => {
const browser = await launch();
try {
  const page = await newPage(browser);
  const t0 = Date.now();
  await open(page);
  const rows = page.locator("#queue tbody tr");
  await rows.first().waitFor({ timeout: 20000 });
  await page.locator("#clients tbody tr").first().waitFor({ timeout: 20000 });
  const loaded = Date.now() - t0;
  const timings = await page.evaluate(() => performance.getEntriesByType("resource").map((r) => `${r.name.replace(location.origin, "")} ${r.startTime.toFixed(0)}+${r.duration.toFixed(0)}ms`).join(", "));
  const nav = await page.evaluate(() => { const n = performance.getEntriesByType("navigation")[0]; return `page ${n.responseEnd.toFixed(0)} ms, DOM ready ${n.domContentLoadedEventEnd.toFixed(0)} ms`; });
  console.log(`first load: ${nav}; ${timings}`);
  const weight = await page.evaluate(async () => (await (await fetch("/")).arrayBuffer()).byteLength);
  if (weight >= 150 * 1024) fail(`the page weighs ${weight} bytes`);
  const auth = { Authorization: `Bearer ${token}` };

  // The queue filtered to open alerts lists exactly the open alerts, each with a reason.
  const openIds = await page.evaluate(async (h) => {
    const a = (await (await fetch("/api/v1/alerts?limit=1000", { headers: h })).json()).alerts;
    const latest = new Map();
    for (const e of a) if (!latest.has(e.id)) latest.set(e.id, e);
    return [...latest.values()].filter((e) => e.event !== "resolved").map((e) => e.client).sort();
  }, auth);
  if (!openIds.length) fail("no open alerts to triage");
  await page.selectOption("#f-state", "open");
  await page.waitForFunction(() => location.search.includes("state=open"));
  await settled(page);
  const listed = (await page.locator("#queue tbody tr").evaluateAll((rs) => rs.map((r) => r.dataset.client))).sort();
  if (JSON.stringify(listed) !== JSON.stringify(openIds)) fail(`queue lists ${listed.length} alerts, ${openIds.length} are open`);
  const reasons = await page.locator("#queue tbody tr td:nth-child(10)").allTextContents();
  if (reasons.some((r) => !/\d/.test(r))) fail(`a queue row has no reason: ${reasons}`);
  await page.screenshot({ path: `${dir}/queue-light.png`, fullPage: false });

  // Filters change the list and live in the URL; the URL restores them.
  const everything = await page.evaluate(async (h) => {
    const a = (await (await fetch("/api/v1/alerts?limit=1000", { headers: h })).json()).alerts;
    return new Set(a.map((e) => e.id)).size;
  }, auth);
  await page.selectOption("#f-state", "");
  await page.selectOption("#f-kind", "boundary_probe");
  await page.waitForFunction(() => location.search.includes("kind=boundary_probe"));
  await settled(page);
  const kinds = await page.locator("#queue tbody tr td:nth-child(3)").allTextContents();
  if (!kinds.length || kinds.some((k) => k !== "boundary_probe") || kinds.length >= everything) fail(`kind filter: ${kinds}`);
  await page.fill("#f-model", "no-such-model");
  await page.dispatchEvent("#f-model", "change");
  await page.waitForFunction(() => location.search.includes("model=no-such-model"));
  await page.waitForFunction(() => document.querySelectorAll("#queue tbody tr").length === 0);
  await open(page, "?kind=extraction&state=open");
  await rows.first().waitFor({ timeout: 20000 });
  await settled(page);
  if ((await page.inputValue("#f-kind")) !== "extraction" || (await page.inputValue("#f-state")) !== "open") fail("the URL's filters were not applied");
  const ex = await page.locator("#queue tbody tr td:nth-child(3)").allTextContents();
  if (ex.some((k) => k !== "extraction")) fail(`restored filter lists ${ex}`);

  // A row opens the client page: the reason, time axes, the threshold line.
  await rows.first().click();
  await page.locator("#drill:not([hidden])").waitFor({ timeout: 10000 });
  const reason = await page.textContent("#drill-reason");
  if (!/\d/.test(reason)) fail(`client page reason: ${reason}`);
  for (const c of ["rate", "neardup", "coverage", "score"]) {
    const ticks = await page.locator(`svg[data-chart="${c}"] text.xtick`).allTextContents();
    if (ticks.length < 2 || ticks.some((t) => !/^\d\d:\d\d$/.test(t))) fail(`chart ${c} has no time axis: ${ticks}`);
  }
  if ((await page.locator('svg[data-chart="score"] line.threshold').count()) !== 1) fail("no threshold line on the score chart");
  const tipText = await page.locator('svg[data-chart="rate"] rect title').first().textContent();
  if (!/queries at \d\d:\d\d UTC$/.test(tipText)) fail(`a bar's tooltip says ${tipText}`);
  const link = await page.evaluate(() => location.search);
  if (!/client_model=.*client=/.test(link)) fail(`the open client is not in the URL: ${link}`);
  await page.screenshot({ path: `${dir}/client-light.png`, fullPage: false });
  // The link an alert carries to Slack, PagerDuty and webhooks opens the same page.
  const who = (await page.textContent("#drill-title")).split(" ")[0];
  const q = new URLSearchParams(link);
  await open(page, `?client_model=${encodeURIComponent(q.get("client_model"))}&client=${encodeURIComponent(q.get("client"))}`);
  await page.locator("#drill:not([hidden])").waitFor({ timeout: 10000 });
  if (!(await page.textContent("#drill-title")).startsWith(who)) fail("an alert's link did not open its client");

  // Keyboard: esc closes the client, j moves, enter opens the selected row.
  await page.keyboard.press("Escape");
  await page.locator("#drill[hidden]").waitFor({ state: "attached", timeout: 5000 });
  await page.keyboard.press("j");
  await page.keyboard.press("j");
  const chosen = await page.locator("#queue tbody tr.selected").getAttribute("data-client");
  await page.keyboard.press("Enter");
  await page.locator("#drill:not([hidden])").waitFor({ timeout: 10000 });
  if (!(await page.textContent("#drill-title")).startsWith(chosen)) fail(`enter opened ${await page.textContent("#drill-title")}, not ${chosen}`);

  // A campaign's page: its members open their client pages.
  const campaign = page.locator("#campaigns tbody tr").first();
  await campaign.waitFor({ timeout: 10000 });
  await campaign.click();
  await page.locator("#campaign:not([hidden])").waitFor({ timeout: 10000 });
  await page.locator("#campaign-members tbody tr").first().waitFor({ timeout: 10000 });
  const members = await page.locator("#campaign-members tbody tr").count();
  if (members < 5) fail(`campaign page lists ${members} members`);
  if (!(Number(await page.locator('svg[data-chart="campaign"]').getAttribute("data-points")) > 0)) fail("campaign timeline is empty");
  await page.locator("#campaign").screenshot({ path: `${dir}/campaign-light.png` });

  // Dark mode: the same three screens.
  await page.emulateMedia({ colorScheme: "dark" });
  await page.locator("#campaign").screenshot({ path: `${dir}/campaign-dark.png` });
  await page.locator("#campaign-members tbody tr").first().click();
  await page.locator("#drill:not([hidden])").waitFor({ timeout: 10000 });
  await page.locator("#drill").screenshot({ path: `${dir}/client-dark.png` });
  await open(page, "?state=open");
  await rows.first().waitFor({ timeout: 20000 });
  await page.screenshot({ path: `${dir}/queue-dark.png`, fullPage: false });

  // Live: an alert raised while the page is open appears without a reload, and the tab
  // title counts it.
  const before = await page.title();
  await page.waitForTimeout(500);
  const [cmd, ...args] = JSON.parse(process.env.PW_SEND_LIVE);
  execFileSync(cmd, args, { stdio: "ignore" });
  await page.waitForFunction(() => [...document.querySelectorAll("#queue tbody tr")].some((r) => r.dataset.client === "attacker"), null, { timeout: 20000 });
  const after = await page.title();
  const n = (t) => Number((/^\((\d+)\)/.exec(t) || [0, 0])[1]);
  if (!(n(after) > n(before))) fail(`tab title ${before} -> ${after}`);
  console.log(`console ok: ${listed.length} open alerts listed, page ${weight} bytes, first load with 10,000 clients ${loaded} ms (navigation to a drawn queue, loopback), ${members} campaign members, live alert shown (${before} -> ${after})`);
} finally {
  await browser.close();
}
})().catch((e) => { console.error(e.message); process.exit(1); });
