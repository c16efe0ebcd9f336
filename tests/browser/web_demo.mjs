// node web_demo.mjs BASE_URL SHOT_DIR
// Walks St John's Clinic in headless Chromium as every demo user: signs in
// through the development issuer, does the main flow of each subsystem the
// role may use, checks what must and must not be visible, saves a screenshot
// of each page, signs out. Prints one JSON line: {checks, failures, shots}.
import { chromium } from 'playwright-core';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const [base, shots] = process.argv.slice(2);
const failures = [];
const taken = [];
let checks = 0;
const check = (ok, what) => { checks += 1; if (!ok) failures.push(what); };
const sha = (b) => createHash('sha256').update(b).digest('hex');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
         '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
});

// A PDF of ~200 KB with random bytes after the magic.
const doc = Buffer.concat([Buffer.from('%PDF-1.7\n'), Buffer.from(Array.from({ length: 200000 }, (_, i) => (i * 7919 + 13) % 251))]);

async function shot(page, name) {
  const path = join(shots, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  taken.push(path);
}

async function as(who, name, flow, viewport = { width: 1200, height: 900 }) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport, acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(10000);
  let dialogs = 0;
  page.on('dialog', async (d) => { dialogs += 1; await d.dismiss(); });
  const errors = [];
  // Error pages the flows visit on purpose (401, 403) log a failed load;
  // anything else (a CSP violation, a missing asset) is a failure.
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 40[13]/.test(m.text())) errors.push(m.text());
  });
  try {
    await page.goto(base + '/');
    await page.getByRole('link', { name: 'Sign in' }).click();
    await page.locator('button', { hasText: name }).click();
    await page.waitForURL(base + '/');
    check((await page.getByTestId('subject').textContent()) === who, `${who}: signed in`);
    // The footer names what this connection negotiated: Chromium offers the
    // post-quantum hybrid, and a demo built with aws-lc takes it.
    const footer = await page.locator('footer').textContent();
    const group = process.env.EXPECT_TLS_GROUP || 'X25519';
    check(footer.startsWith(`TLS 1.3, ${group}, TLS13_`), `${who}: footer shows TLS 1.3 with ${group} (${footer})`);
    await flow(page);
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.waitForURL(base + '/');
    check(await page.getByRole('link', { name: 'Sign in' }).isVisible(), `${who}: signed out`);
    const r = await page.goto(base + '/careconnect');
    check(r.status() === 401, `${who}: the old session is gone`);
  } catch (e) {
    failures.push(`${who}: ${e.message.split('\n')[0]}`);
  } finally {
    check(dialogs === 0, `${who}: no script dialog`);
    check(errors.length === 0, `${who}: no console errors (${errors.join('; ')})`);
    await context.close();
  }
}

// Clicks `link` and returns the downloaded file's bytes.
async function download(page, link) {
  const [d] = await Promise.all([page.waitForEvent('download'), link.click()]);
  return readFileSync(await d.path());
}

async function status(page, path) {
  return (await page.goto(base + path)).status();
}

async function navLinks(page) {
  return (await page.locator('header nav a').allTextContents()).map((s) => s.trim());
}

await as('patient-alice', 'Alice Smith', async (page) => {
  await shot(page, 'home-patient');
  const nav = await navLinks(page);
  check(nav.includes('CareConnect') && !nav.includes('Admin') && !nav.includes('FinCare') && !nav.includes('MedRecords'), 'alice: nav shows CareConnect only');
  await page.goto(base + '/careconnect');
  check(await page.getByText('penicillin').isVisible(), 'alice: own allergies');
  check(!(await page.content()).includes('Bob Jones'), "alice: no one else's data");
  const day = new Date(Date.now() + 3 * 86400000).toISOString().slice(0, 10);
  await page.locator('select[name=doctor]').selectOption({ label: 'Dr Derek Shepherd' });
  await page.locator('input[name=date]').fill(day);
  await page.locator('input[name=time]').fill('11:30');
  await page.locator('input[name=reason]').fill('Inhaler technique review');
  await page.getByRole('button', { name: 'Book' }).click();
  check(await page.getByText('Inhaler technique review').isVisible(), 'alice: booked');
  await shot(page, 'careconnect');
  const row = page.locator('tr', { hasText: 'Inhaler technique review' });
  await row.getByRole('button', { name: 'Cancel' }).click();
  check(await page.locator('tr.muted', { hasText: 'Inhaler technique review' }).isVisible(), 'alice: cancelled');
  check((await status(page, '/fincare')) === 403, 'alice: FinCare refused');
  check((await status(page, '/medrecords/patients/patient-bob')) === 403, "alice: Bob's record refused");
  await page.goto(base + '/');
});

await as('patient-bob', 'Bob Jones', async (page) => {
  await page.goto(base + '/careconnect');
  const pay = page.getByRole('button', { name: /^Pay £/ });
  check((await pay.count()) === 1, 'bob: one prescription to pay');
  await pay.click();
  check(await page.locator('#prescriptions .badge.paid').first().isVisible(), 'bob: paid');
  check((await page.getByRole('button', { name: /^Pay £/ }).count()) === 0, 'bob: nothing left to pay');
  await page.goto(base + '/');
}, { width: 390, height: 844 });

await as('patient-bob', 'Bob Jones', async (page) => {
  await page.goto(base + '/careconnect');
  await shot(page, 'careconnect-phone');
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  check(width <= 390, `phone: no sideways scrolling (${width}px)`);
  await page.goto(base + '/');
}, { width: 390, height: 844 });

let downloaded = '';
await as('doctor-grey', 'Dr Meredith Grey', async (page) => {
  await shot(page, 'home-doctor');
  await page.goto(base + '/medrecords');
  await shot(page, 'medrecords');
  check(!(await page.content()).includes('Carol White'), "grey: Carol is not in Grey's care");
  await page.getByRole('link', { name: 'Alice Smith' }).click();
  await page.locator('textarea[name=text]').fill('Reviewed in clinic: inhaler technique good.');
  await page.getByRole('button', { name: 'Add note' }).click();
  check(await page.getByText('Reviewed in clinic: inhaler technique good.').isVisible(), 'grey: note added');
  await shot(page, 'medrecords-patient');

  await page.goto(base + '/eps');
  await page.locator('select[name=patient]').selectOption({ label: 'Bob Jones' });
  await page.locator('input[name=drug]').fill('Ramipril');
  await page.locator('input[name=dosage]').fill('2.5 mg');
  await page.locator('input[name=frequency]').fill('once daily');
  await page.getByRole('button', { name: 'Prescribe and sign' }).click();
  const rx = page.locator('tr', { hasText: 'Ramipril' });
  check(await rx.locator('.badge.sig-ok').isVisible(), 'grey: prescription signed');
  await shot(page, 'eps');
  await rx.getByRole('button', { name: 'Cancel' }).click();
  check(await page.locator('tr', { hasText: 'Ramipril' }).locator('.badge.cancelled').isVisible(), 'grey: prescription cancelled');

  await page.goto(base + '/medicloud');
  await page.locator('input[type=file]').setInputFiles({ name: 'chest-xray-report.pdf', mimeType: 'application/pdf', buffer: doc });
  await page.getByRole('button', { name: 'Upload' }).click();
  const item = page.locator('.docs li', { hasText: 'chest-xray-report.pdf' });
  check(await item.isVisible(), 'grey: uploaded');
  const bytes = await download(page, item.getByRole('link', { name: 'chest-xray-report.pdf' }));
  check(sha(bytes) === sha(doc), 'grey: downloaded bytes equal the upload');
  await item.locator('input[name=user]').first().fill('partner-pat');
  await item.getByRole('button', { name: 'Share' }).click();
  await shot(page, 'medicloud');
  check((await status(page, '/fincare')) === 403, 'grey: FinCare refused');
  await page.goto(base + '/');
});

await as('partner-pat', 'Pat Lab', async (page) => {
  const nav = await navLinks(page);
  check(nav.includes('Medicloud') && !nav.includes('MedRecords'), 'pat: nav shows Medicloud only');
  await page.goto(base + '/medicloud');
  const item = page.locator('.docs li', { hasText: 'chest-xray-report.pdf' });
  check(await item.getByText('shared by doctor-grey').isVisible(), 'pat: sees the shared document');
  check((await item.getByRole('button', { name: 'Delete' }).count()) === 0, 'pat: cannot delete it');
  downloaded = sha(await download(page, item.getByRole('link', { name: 'chest-xray-report.pdf' })));
  check(downloaded === sha(doc), 'pat: downloaded bytes equal the upload');
  await shot(page, 'medicloud-partner');
  check((await status(page, '/medrecords')) === 403, 'pat: MedRecords refused');
  await page.goto(base + '/');
});

await as('finance-fiona', 'Fiona Banks', async (page) => {
  await page.goto(base + '/fincare');
  await shot(page, 'fincare');
  const html = await page.content();
  check(html.includes('P-') && !html.includes('Bob Jones') && !html.includes('Amlodipine'), 'fiona: pseudonyms only');
  const csv = (await download(page, page.getByRole('link', { name: 'Download CSV' }))).toString('utf8');
  check(csv.split('\n')[0].includes('pseudonym') && (csv.match(/P-/g) || []).length >= 2, 'fiona: CSV with both payments');
  check((await status(page, '/careconnect')) === 403, 'fiona: CareConnect refused');
  await page.goto(base + '/');
});

// Who has seen my record: Dr Shepherd (Alice is not in his care) opens
// Alice's record under break-glass; Alice's page lists it, flagged; Bob's
// does not.
await as('doctor-shepherd', 'Dr Derek Shepherd', async (page) => {
  await page.goto(base + '/medrecords');
  await page.locator('#break-glass input[name=patient]').fill('patient-alice');
  await page.locator('#break-glass input[name=reason]').fill('Collapsed in the waiting room, checking allergies');
  await page.getByRole('button', { name: 'Declare emergency access' }).click();
  await page.goto(base + '/medrecords/patients/patient-alice');
  check(await page.getByText('penicillin').first().isVisible(), "shepherd: Alice's record under break-glass");
  await page.goto(base + '/');
});

await as('patient-alice', 'Alice Smith', async (page) => {
  await page.goto(base + '/careconnect#seen');
  const row = page.getByTestId('seen-row').filter({ hasText: 'Dr Derek Shepherd' }).first();
  check(await row.isVisible(), 'alice: Dr Shepherd is listed under who has seen my record');
  check(await row.locator('.badge.flagged', { hasText: 'break-glass' }).isVisible(), 'alice: flagged as break-glass');
  check(!(await page.getByTestId('seen').textContent()).includes('patient-'), 'alice: no internal ids');
  await page.locator('#seen').screenshot({ path: join(shots, 'careconnect-seen.png') });
  taken.push(join(shots, 'careconnect-seen.png'));
  await page.goto(base + '/');
});

await as('patient-bob', 'Bob Jones', async (page) => {
  await page.goto(base + '/careconnect#seen');
  check(!(await page.locator('#seen').textContent()).includes('Dr Derek Shepherd'), "bob: Alice's break-glass is not on Bob's page");
  await page.goto(base + '/');
});

await as('admin-adam', 'Adam Admin', async (page) => {
  await page.goto(base + '/admin');
  check(await page.getByTestId('chain').getByText('Chain verified').isVisible(), 'adam: audit chain verified');
  check(await page.getByText('Dr Derek Shepherd').first().isVisible(), 'adam: directory');
  // An app registered itself with UDAP before the walk (browser.rs).
  if (process.env.EXPECT_UDAP_APP) {
    check(await page.getByTestId('udap-client').getByText(process.env.EXPECT_UDAP_APP).isVisible(), 'adam: the UDAP app is listed');
  }
  await shot(page, 'admin');
  await page.getByTestId('latest').click();
  check(await page.getByText('DownloadDocument').first().isVisible(), "adam: the partner's download is audited");
  await page.goto(base + '/');
});

await browser.close();
writeFileSync(join(shots, 'result.json'), JSON.stringify({ checks, failures }));
console.log(JSON.stringify({ checks, failures, shots: taken }));
