// node dev_login.mjs AUTHORIZE_URL "Button text" SCREENSHOT.png
// Opens the development issuer's sign-in page in headless Chromium, takes a
// screenshot, clicks the user whose button contains the text, and prints one
// JSON line: the page title, the warning banner, whether any script dialog
// fired, and the redirect URL the browser was sent to (nothing listens there).
import { chromium } from 'playwright-core';

const [url, who, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
         '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 760 } });
  let dialog = false;
  page.on('dialog', async (d) => { dialog = true; await d.dismiss(); });
  await page.goto(url);
  const title = await page.title();
  const banner = (await page.locator('.warn').textContent()).trim();
  if (shot) await page.screenshot({ path: shot, fullPage: true });
  const redirected = page.waitForRequest((r) => r.url().includes('/callback?'), { timeout: 10000 });
  await page.locator('button', { hasText: who }).click();
  const callback = (await redirected).url();
  console.log(JSON.stringify({ title, banner, dialog, callback }));
} finally {
  await browser.close();
}
