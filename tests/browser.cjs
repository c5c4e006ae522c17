// Headless Debian Chromium through playwright-core, as the browser tests launch it: the
// flags keep it off the (closed) network, and a page error fails the test.
const { chromium } = require("playwright-core");

exports.launch = () => chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

exports.page = async (browser) => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("pageerror", (e) => { console.error("page error:", e.message); process.exitCode = 1; });
  return page;
};
