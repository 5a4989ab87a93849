// Drives Debian's chromium against callscribe's browser console: the page
// captures a WAV file as its microphone (Chromium's fake capture device),
// streams it over WHIP, and must show the transcript. Used by
// internal/e2e's TestBrowserConsole.
//
// usage: node browser.mjs BASE_URL TOKEN CALL_ID WAV SCREENSHOT.png [restart-marker-file]
// Prints one JSON line: {"finals": [...], "state": "...", "log": "..."}.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync, existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [base, token, call, wav, shot, restartMarker] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), 'callscribe-chromium-'));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--allow-loopback-in-peer-connection',
    '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
    `--use-file-for-fake-audio-capture=${wav}%noloop`,
  ],
});
let out = {};
try {
  const page = ctx.pages()[0] || await ctx.newPage();
  page.on('console', (m) => process.stderr.write(`[page] ${m.text()}\n`));
  // The console takes its token from the tab's session storage (typed in),
  // never from the URL.
  await page.addInitScript((t) => sessionStorage.setItem('callscribe.token', t), token);
  const q = new URLSearchParams({ call, source: 'mic', codec: 'opus', autostart: '1' });
  await page.goto(`${base}/console/?${q}`);
  await page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 20000 });
  if (restartMarker) {
    // Tell the test the call is live; it restarts the coordinator, and the
    // page must reconnect on its own.
    writeFileSync(restartMarker, 'connected\n');
    await page.waitForFunction(() => document.body.dataset.state !== 'connected', null, { timeout: 30000 });
    await page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 60000 });
  }
  // The clip is a few seconds; its last final comes once the recogniser
  // hears the silence after it.
  await page.waitForFunction(() => document.querySelectorAll('#ch0 .final').length > 0, null, { timeout: 30000 });
  await page.waitForTimeout(1500);
  await page.click('#end');
  await page.waitForFunction(() => document.body.dataset.finalised === 'true', null, { timeout: 30000 });
  await page.screenshot({ path: shot, fullPage: true });
  out = await page.evaluate(() => ({
    finals: [...document.querySelectorAll('#ch0 .final .x')].map((e) => e.textContent),
    state: document.body.dataset.state,
    log: document.getElementById('log').textContent,
  }));
} catch (e) {
  out.error = String(e);
  try { await ctx.pages()[0].screenshot({ path: shot, fullPage: true }); } catch (_) { /* no page */ }
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(out) + '\n');
process.exit(out.error ? 1 : 0);
