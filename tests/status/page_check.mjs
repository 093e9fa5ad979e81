// Loads Sluice's status page in headless Chromium (Debian's, driven by playwright-core): signs in
// with a bearer through the page's form, reads every table, reloads (the session cookie must
// hold), saves a screenshot, and prints one JSON object. Run by tests/all/status.rs.
//
//     node page_check.mjs BASE_URL TOKEN SCREENSHOT_PNG
import { createRequire } from 'node:module';

const require = createRequire(process.env.SLUICE_PLAYWRIGHT + '/');
const { chromium } = require('playwright-core');

const [base, token, shot] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.SLUICE_CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
try {
  const page = await browser.newPage();
  const problems = [];
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') problems.push(m.text()); });
  page.on('pageerror', (e) => problems.push(String(e)));
  const first = await page.goto(base + '/status');
  const signInStatus = first.status();
  await page.fill('input[name=token]', token);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  const reloaded = await page.reload();
  const rows = await page.$$eval('table tr', (trs) => trs.map((tr) => [...tr.children].map((c) => c.innerText.trim())));
  const heading = await page.innerText('h1');
  const refresh = await page.getAttribute('meta[http-equiv=refresh]', 'content');
  const scripts = await page.$$eval('script', (s) => s.length);
  await page.screenshot({ path: shot, fullPage: true });
  console.log(JSON.stringify({ signInStatus, status: reloaded.status(), url: page.url(), heading, refresh, scripts, rows, problems }));
} finally {
  await browser.close();
}
