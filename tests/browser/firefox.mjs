// Drives Debian's firefox-esr for the browser tests (tests/browser/engines.py), with
// puppeteer-core over WebDriver BiDi and no browser download.
//
//   node firefox.mjs EXECUTABLE PREFS_JSON VIEWPORT_JSON
//
// Prints {"ready": version} once the browser runs, then answers one JSON request per line on
// stdin with one JSON line on stdout: {id, value} or {id, error}. Closing stdin closes the
// browser.
import readline from 'node:readline';
import puppeteer from 'puppeteer-core';

const [executablePath, prefs, viewport] = process.argv.slice(2);
const browser = await puppeteer.launch({
  browser: 'firefox',
  executablePath,
  headless: true,
  extraPrefsFirefox: JSON.parse(prefs),
  protocolTimeout: 120000,
});
const pages = new Map();
let pageIds = 0;
const send = (message) => process.stdout.write(JSON.stringify(message) + '\n');

// Runs in the page: the test's function arrives as source text.
const call = async (source, args) => (0, eval)('(' + source + ')')(...args);

const ops = {
  async newPage() {
    const context = await browser.createBrowserContext();
    const page = await context.newPage();
    await page.setViewport(JSON.parse(viewport));
    pages.set(++pageIds, { context, page });
    return pageIds;
  },
  async goto({ page, url }) {
    await pages.get(page).page.goto(url, { timeout: 30000 });
  },
  async evaluate({ page, fn, args }) {
    const value = await pages.get(page).page.evaluate(call, fn, args);
    return value === undefined ? null : value;
  },
  async close({ page }) {
    await pages.get(page).context.close();
    pages.delete(page);
  },
};

send({ ready: await browser.version() });
for await (const line of readline.createInterface({ input: process.stdin })) {
  const request = JSON.parse(line);
  try {
    send({ id: request.id, value: await ops[request.op](request) });
  } catch (e) {
    send({ id: request.id, error: String(e?.message || e) });
  }
}
await browser.close();
