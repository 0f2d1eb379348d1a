// End-to-end test of the web demo in headless Chromium (playwright-core, no test framework).
//
//   node tests/browser/demo.test.mjs http://127.0.0.1:8080 [--mock]
//
// Normally started by tests/browser/run.sh, which also starts the server. `--mock` adds checks that
// only the development mock server can trigger (429/503/stream errors/content filter via magic seeds).
//
// Env: OUT_DIR (screenshots, default <repo>/target/browser-test), CHROMIUM (default /usr/bin/chromium),
//      LONG_MAX_NEW_TOKENS (step 4, default 100: the bundled tiny model has 128 positions),
//      STEP_TIMEOUT_MS (default 60000).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, '../..');
const BASE = (process.argv[2] ?? 'http://127.0.0.1:8080').replace(/\/+$/, '');
const MOCK = process.argv.includes('--mock');
const OUT_DIR = path.resolve(ROOT, process.env.OUT_DIR ?? 'target/browser-test');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const LONG_TOKENS = Number(process.env.LONG_MAX_NEW_TOKENS ?? 100);
const TIMEOUT = Number(process.env.STEP_TIMEOUT_MS ?? 60000);
const FIXTURES = path.join(ROOT, 'tests/fixtures/tiny-openflamingo/images');

fs.mkdirSync(OUT_DIR, { recursive: true });
for (const f of fs.readdirSync(OUT_DIR)) {
  if (/^(FAILED-.*|\d\d[a-z]?-.*)\.png$/.test(f)) fs.rmSync(path.join(OUT_DIR, f)); // this script's old screenshots
}

// ---------------------------------------------------------------------------
// Test data

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function pngChunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}
// A small file whose PNG header claims 20000x20000 RGB (400 Mpx): the server must refuse it by its
// header dimensions (413) without decoding it.
function hugeHeaderPng() {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(20000, 0);
  ihdr.writeUInt32BE(20000, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const idat = zlib.deflateSync(Buffer.alloc(20001 * 4)); // a few rows; the rest is missing
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr), pngChunk('IDAT', idat), pngChunk('IEND', Buffer.alloc(0)),
  ]);
}

// ---------------------------------------------------------------------------
// Pacing proxy. The bundled tiny model writes a whole answer in a few milliseconds, so all SSE events
// reach the browser in one or two network reads (Chromium's DevTools network throttling cannot split
// those either). To see the page render a stream token by token, and to keep a long generation in
// flight long enough to press Stop, the page talks to the server through this transparent proxy,
// which forwards every request and response unchanged but, while `paceMs` > 0, writes an SSE
// response one event at a time, `paceMs` apart. A client that disconnects closes the upstream
// connection at once, so the server sees a Stop exactly as it would without the proxy.

let paceMs = 0;
const upstream = new URL(BASE);
const HOP_BY_HOP = ['connection', 'keep-alive', 'transfer-encoding', 'proxy-connection', 'upgrade'];
const proxy = http.createServer((req, res) => {
  const headers = { ...req.headers, host: upstream.host };
  const up = http.request({ hostname: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers }, (upRes) => {
    const outHeaders = Object.fromEntries(Object.entries(upRes.headers).filter(([k]) => !HOP_BY_HOP.includes(k)));
    res.writeHead(upRes.statusCode, upRes.statusMessage, outHeaders);
    const pace = paceMs;
    if (!/text\/event-stream/.test(upRes.headers['content-type'] ?? '') || pace === 0) {
      upRes.pipe(res);
      return;
    }
    let buf = '';
    const queue = [];
    let timer = null;
    let ended = false;
    const pump = () => {
      if (timer || res.destroyed) return;
      if (!queue.length) { if (ended) res.end(); return; }
      res.write(queue.shift());
      timer = setTimeout(() => { timer = null; pump(); }, pace);
    };
    upRes.setEncoding('utf8');
    upRes.on('data', (chunk) => {
      buf += chunk;
      for (let m = /\r?\n\r?\n/.exec(buf); m; m = /\r?\n\r?\n/.exec(buf)) {
        queue.push(buf.slice(0, m.index + m[0].length));
        buf = buf.slice(m.index + m[0].length);
      }
      pump();
    });
    upRes.on('end', () => { ended = true; if (buf) queue.push(buf); buf = ''; pump(); });
  });
  up.on('error', () => {
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
    res.end();
  });
  req.pipe(up);
  res.on('close', () => { if (!res.writableFinished) up.destroy(); });
});
await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
const PROXY = `http://127.0.0.1:${proxy.address().port}`;
console.log(`server ${BASE}, pacing proxy ${PROXY}`);

// ---------------------------------------------------------------------------
// Browser

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'flamingo-demo-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: CHROMIUM,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1280, height: 1000 },
});
const page = context.pages()[0] ?? await context.newPage();
page.setDefaultTimeout(TIMEOUT);

// Console errors: HTTP error statuses that a step provokes on purpose are logged by Chromium as
// "Failed to load resource: ... status of 413"; each step declares which ones it expects.
const consoleErrors = [];
let expectedStatuses = new Set();
page.on('console', (msg) => {
  if (msg.type() !== 'error' && msg.type() !== 'warning') return;
  const text = msg.text();
  const m = /status of (\d{3})/.exec(text);
  if (m && expectedStatuses.has(Number(m[1]))) return;
  if (msg.type() === 'warning') { console.log(`  (console warning) ${text}`); return; }
  consoleErrors.push(text);
});
page.on('pageerror', (err) => consoleErrors.push(`pageerror: ${err.message}`));
const externalRequests = [];
page.on('request', (req) => {
  const u = new URL(req.url());
  if (!['data:', 'blob:'].includes(u.protocol) && u.origin !== new URL(BASE).origin
    && !['localhost', '127.0.0.1'].includes(u.hostname)) externalRequests.push(req.url());
});

const shot = async (name, opts = {}) => {
  const file = path.join(OUT_DIR, `${name}.png`);
  if (!opts.fullPage) await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: file, ...opts });
  console.log(`  screenshot ${path.relative(ROOT, file)}`);
};

const results = [];
async function step(name, fn) {
  console.log(`\n# ${name}`);
  const t0 = Date.now();
  try {
    await fn();
    results.push([name, 'ok']);
    console.log(`  ok (${Date.now() - t0} ms)`);
  } catch (e) {
    results.push([name, 'FAILED']);
    console.log(`  FAILED: ${e.stack ?? e}`);
    await shot(`FAILED-${name.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}`).catch(() => {});
  } finally {
    expectedStatuses = new Set();
    paceMs = 0;
  }
}

// Page helpers
const panel = page.locator('#output-panel');
const output = page.locator('#output-text');
const runStatus = page.locator('#run-status');
const errorBox = page.locator('#error');
const generateBtn = page.getByRole('button', { name: 'Generate', exact: true });
const stopBtn = page.getByRole('button', { name: 'Stop', exact: true });
const queryFile = page.locator('#query-slot-host input[type="file"]');
const state = () => panel.getAttribute('data-state');

async function setMode(label) {
  await page.getByText(label, { exact: true }).click();
  await page.locator(`#mode-${{ Caption: 'caption', Question: 'vqa', 'Few-shot': 'fewshot' }[label]}:checked`).waitFor({ state: 'attached' });
}

async function waitFinished() {
  await page.waitForFunction(() => ['done', 'error', 'stopped'].includes(document.querySelector('#output-panel').dataset.state), null, { timeout: TIMEOUT });
  return state();
}

async function setMaxTokens(n) {
  await page.getByLabel('Max new tokens').fill(String(n));
}

// Records what a person would see: the output text and state after every DOM change.
async function watchOutput() {
  await page.evaluate(() => {
    window.__obs?.disconnect();
    const p = document.querySelector('#output-panel');
    const out = document.querySelector('#output-text');
    window.__snaps = [];
    window.__obs = new MutationObserver(() => {
      window.__snaps.push({ state: p.dataset.state, text: out.textContent, t: performance.now() });
    });
    window.__obs.observe(p, { subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ['data-state'] });
  });
}
const snapshots = () => page.evaluate(() => window.__snaps);

async function mockStats() {
  return (await fetch(`${BASE}/mock/stats`)).json();
}
async function mockStatsWhen(pred, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const st = await mockStats();
    if (pred(st)) return st;
    if (Date.now() > deadline) assert.fail(`mock stats never matched: ${JSON.stringify(st)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function expectDone(what) {
  const st = await waitFinished();
  if (st !== 'done') assert.fail(`${what}: ended in state ${st}: ${await errorBox.textContent()} / ${await runStatus.textContent()}`);
  assert.match(await runStatus.textContent(), /^Done/);
  assert.equal(await errorBox.isVisible(), false, 'no error shown');
}

// ---------------------------------------------------------------------------

await step('0 page loads, shows readiness and model id', async () => {
  await page.goto(`${BASE}/`);
  await page.locator('#ready[data-ready="ready"]').waitFor();
  await page.waitForFunction(() => !['…', ''].includes(document.querySelector('#model-id').textContent));
  const model = await page.locator('#model-id').textContent();
  console.log(`  ready; model id: ${model}`);
  assert.notEqual(model, 'unknown', 'model id from /info or /v1/models');
  // Every form control has an accessible name.
  const unnamed = await page.evaluate(() => [...document.querySelectorAll('input, select, button, textarea')]
    .filter((el) => !(el.labels?.length || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby') || (el.tagName === 'BUTTON' && el.textContent.trim())))
    .map((el) => el.outerHTML.slice(0, 120)));
  assert.deepEqual(unnamed, [], 'controls without a label');
  // Keyboard focus is visible: tab into the page and check the focused element gets an outline.
  await page.keyboard.press('Tab');
  await page.keyboard.press('Tab');
  const focusStyle = await page.evaluate(() => {
    const el = document.activeElement;
    const cs = getComputedStyle(el);
    return { tag: el.tagName, id: el.id, outline: cs.outlineStyle, width: cs.outlineWidth };
  });
  console.log(`  focused after 2x Tab: ${JSON.stringify(focusStyle)}`);
  assert.notEqual(focusStyle.outline, 'none', 'focused element shows an outline');
  await shot('00-loaded');
});

await step('0b paste and drag-and-drop put images into the focused slot', async () => {
  // From here on the page is served through the pacing proxy (pass-through unless a step paces).
  await page.goto(`${PROXY}/`);
  await page.locator('#ready[data-ready="ready"]').waitFor();
  await setMode('Caption');
  const png = fs.readFileSync(path.join(FIXTURES, 'rings.png')).toString('base64');
  // Paste while the drop zone has keyboard focus.
  await page.locator('#query-slot-host .drop').focus();
  await page.evaluate((b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], 'image.png', { type: 'image/png' }));
    document.activeElement.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
  }, png);
  await page.locator('#query-slot-host .slot-info', { hasText: 'pasted image' }).waitFor();
  await page.locator('#query-slot-host .slot-info', { hasText: '×' }).waitFor(); // preview decoded
  // Drop a file onto the drop zone.
  const dt = await page.evaluateHandle((b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const d = new DataTransfer();
    d.items.add(new File([bytes], 'dropped-rings.png', { type: 'image/png' }));
    return d;
  }, png);
  await page.locator('#query-slot-host .drop').dispatchEvent('drop', { dataTransfer: dt });
  await page.locator('#query-slot-host .slot-info', { hasText: 'dropped-rings.png' }).waitFor();
  // Keyboard: Enter on the drop zone opens the file chooser.
  const chooser = page.waitForEvent('filechooser', { timeout: 5000 });
  await page.locator('#query-slot-host .drop').focus();
  await page.keyboard.press('Enter');
  await (await chooser).setFiles(path.join(FIXTURES, 'stripes.png'));
  await page.locator('#query-slot-host .slot-info', { hasText: 'stripes.png' }).waitFor();
  await page.getByRole('button', { name: 'Remove image' }).click();
  await page.locator('#query-slot-host .slot-info', { hasText: 'No image.' }).waitFor();
});

await step('1 caption an uploaded image, streamed token by token', async () => {
  await setMode('Caption');
  // Without an image the page explains what is missing (no request is sent).
  await generateBtn.click();
  assert.match(await errorBox.textContent(), /no image yet/);
  assert.equal(await page.evaluate(() => document.activeElement.closest('#query-slot-host') !== null), true, 'focus moved to the image field');
  await queryFile.setInputFiles(path.join(FIXTURES, 'checker.png'));
  await page.locator('#query-slot-host .slot-info', { hasText: 'checker.png' }).waitFor();
  assert.equal(await page.locator('#prompt-preview').textContent(), '<image>Output:');
  await setMaxTokens(20);
  paceMs = 40;
  await watchOutput();
  await generateBtn.click();
  await expectDone('caption');
  const snaps = await snapshots();
  const streamed = snaps.filter((s) => s.state === 'streaming' && s.text.length > 0);
  const distinct = [...new Set(streamed.map((s) => s.text))];
  console.log(`  ${distinct.length} distinct partial outputs before the final event; final: ${JSON.stringify(await output.textContent())}`);
  assert.ok(distinct.length >= 3, `expected several increments while streaming, saw ${distinct.length}`);
  for (let i = 1; i < distinct.length; i++) {
    assert.ok(distinct[i].startsWith(distinct[i - 1]), 'streamed text only grows');
  }
  const finalText = await output.textContent();
  assert.ok(finalText.length > 0, 'final text not empty');
  if (!finalText.startsWith(distinct.at(-1))) console.log('  note: the final generated_text replaced the streamed text');
  console.log(`  status: ${await runStatus.textContent()}`);
  await shot('01-caption');
});

await step('2 few-shot prompt with two examples', async () => {
  await setMode('Few-shot');
  const examples = page.locator('#examples > li');
  assert.equal(await examples.count(), 2, 'two example rows by default');
  await examples.nth(0).locator('input[type="file"]').setInputFiles(path.join(FIXTURES, 'stripes.png'));
  await page.getByLabel('Example 1 caption').fill('Stripes.');
  await page.getByRole('button', { name: /“House” for example 2 image/ }).click();
  await page.getByLabel('Example 2 caption').fill('A house.');
  await examples.nth(1).locator('.slot-info', { hasText: 'house.png' }).waitFor();
  await queryFile.setInputFiles(path.join(FIXTURES, 'gradient.png'));
  await page.locator('#query-slot-host .slot-info', { hasText: 'gradient.png' }).waitFor();
  assert.equal(await page.locator('#prompt-preview').textContent(),
    '<image>Output:Stripes.<|endofchunk|><image>Output:A house.<|endofchunk|><image>Output:');
  await setMaxTokens(12);
  await generateBtn.click();
  await expectDone('few-shot');
  const text = await output.textContent();
  console.log(`  output: ${JSON.stringify(text)}; status: ${await runStatus.textContent()}`);
  assert.ok(text.length > 0, 'few-shot output not empty');
  await page.locator('.prompt-preview summary').click(); // show the prompt in the screenshot
  await shot('02-fewshot', { fullPage: true });
  await page.locator('.prompt-preview summary').click();
});

await step('3 oversized image -> image-too-large message', async () => {
  await setMode('Caption');
  const big = hugeHeaderPng();
  fs.writeFileSync(path.join(OUT_DIR, 'huge-header-20000x20000.png'), big);
  await queryFile.setInputFiles({ name: 'huge-20000x20000.png', mimeType: 'image/png', buffer: big });
  await page.locator('#query-slot-host .slot-info', { hasText: 'huge-20000x20000.png' }).waitFor();
  expectedStatuses = new Set([413]);
  await generateBtn.click();
  const st = await waitFinished();
  assert.equal(st, 'error');
  const msg = await errorBox.textContent();
  console.log(`  error: ${msg}`);
  assert.match(msg, /Image too large/);
  assert.match(msg, /413/);
  assert.equal(await page.getByRole('alert').textContent(), msg, 'error is in an alert (live) region');
  await shot('03-too-large');
});

await step('3b not an image -> wrong-type message', async () => {
  await queryFile.setInputFiles({ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('this is not an image\n') });
  await page.locator('#query-slot-host .slot-info', { hasText: 'notes.txt' }).waitFor();
  expectedStatuses = new Set([422]);
  await generateBtn.click();
  assert.equal(await waitFinished(), 'error');
  const msg = await errorBox.textContent();
  console.log(`  error: ${msg}`);
  assert.match(msg, /422/);
  await shot('03b-wrong-type');
});

await step('4 long generation, press Stop, next request works', async () => {
  await setMode('Caption');
  await page.getByRole('button', { name: /“Cat” for image/ }).click();
  await page.locator('#query-slot-host .slot-info', { hasText: 'cat.png' }).waitFor();
  await setMaxTokens(LONG_TOKENS);
  paceMs = 100;
  await watchOutput();
  await generateBtn.click();
  await page.waitForFunction(() => (window.__snaps ?? []).filter((s) => s.state === 'streaming' && s.text).length >= 3
    || ['done', 'error', 'stopped'].includes(document.querySelector('#output-panel').dataset.state));
  assert.equal(await state(), 'streaming',
    `still generating when Stop is pressed (it ended early: ${await errorBox.textContent()} ${await runStatus.textContent()})`);
  assert.equal(await stopBtn.isEnabled(), true);
  const partialBefore = await output.textContent();
  await stopBtn.click();
  assert.equal(await waitFinished(), 'stopped');
  const status = await runStatus.textContent();
  console.log(`  status: ${status}; partial: ${JSON.stringify(await output.textContent())}`);
  assert.match(status, /Stopped/);
  assert.ok((await output.textContent()).startsWith(partialBefore), 'partial output kept');
  assert.equal(await errorBox.isVisible(), false, 'stopping is not an error');
  assert.equal(await generateBtn.isEnabled(), true);
  assert.equal(await stopBtn.isEnabled(), false);
  await shot('04-stopped');
  paceMs = 0;

  if (MOCK) {
    const st = await mockStatsWhen((x) => x.active === 0, 2000);
    console.log(`  mock stats after stop: ${JSON.stringify(st)}`);
  }
  // The server frees the slot when the connection closes: the next request must succeed.
  await setMaxTokens(8);
  await generateBtn.click();
  await expectDone('request after stop');
  console.log(`  next request: ${await runStatus.textContent()}`);
  await shot('04b-after-stop');
});

if (MOCK) {
  await step('mock: Stop closes the connection at once (no throttling)', async () => {
    if ((await mockStats()).token_delay_ms < 20) { console.log('  skipped: the mock streams too fast'); return; }
    await setMode('Caption');
    await setMaxTokens(200);
    const before = await mockStats();
    await watchOutput();
    await generateBtn.click();
    await page.waitForFunction(() => (window.__snaps ?? []).filter((s) => s.state === 'streaming' && s.text).length >= 3);
    await page.keyboard.press('Escape'); // keyboard shortcut for Stop
    assert.equal(await waitFinished(), 'stopped');
    const t0 = Date.now();
    const after = await mockStatsWhen((st) => st.active === 0, 2000);
    console.log(`  slot freed ${Date.now() - t0} ms after the page showed Stopped: ${JSON.stringify(after)}`);
    assert.equal(after.cancelled, before.cancelled + 1, 'the server saw the stream cancelled, not completed');
    await setMaxTokens(20);
  });
  await step('mock: 429 busy shows Retry-After', async () => {
    await page.getByLabel(/^Seed/).fill('429');
    expectedStatuses = new Set([429]);
    await generateBtn.click();
    assert.equal(await waitFinished(), 'error');
    const msg = await errorBox.textContent();
    console.log(`  error: ${msg}`);
    assert.match(msg, /Server busy.*Try again in 7 s/);
    await shot('06-busy-429');
  });
  await step('mock: 503 not ready', async () => {
    await page.getByLabel(/^Seed/).fill('503');
    expectedStatuses = new Set([503]);
    await generateBtn.click();
    assert.equal(await waitFinished(), 'error');
    const msg = await errorBox.textContent();
    console.log(`  error: ${msg}`);
    assert.match(msg, /Server not ready.*Try again in 3 s/);
  });
  await step('mock: event: error mid-stream keeps partial text', async () => {
    await page.getByLabel(/^Seed/).fill('500');
    await generateBtn.click();
    assert.equal(await waitFinished(), 'error');
    const msg = await errorBox.textContent();
    console.log(`  error: ${msg}; partial: ${JSON.stringify(await output.textContent())}`);
    assert.match(msg, /Generation failed after it started: worker crashed \(mock\) \(internal\)/);
    assert.ok((await output.textContent()).length > 0);
    await shot('07-stream-error');
  });
  await step('mock: content filter mark', async () => {
    await page.getByLabel(/^Seed/).fill('451');
    await generateBtn.click();
    await expectDone('filtered');
    assert.equal(await page.locator('#filter-badge').isVisible(), true);
    assert.match(await runStatus.textContent(), /content filter/);
    await shot('08-filtered');
  });
  await step('mock: beams > 1 uses /generate', async () => {
    await page.getByLabel(/^Seed/).fill('');
    await page.getByLabel('Beams').fill('3');
    const req = page.waitForRequest((r) => r.url().endsWith('/generate') && r.method() === 'POST');
    await generateBtn.click();
    const body = (await req).postDataJSON();
    assert.equal(body.parameters.num_beams, 3);
    assert.equal(body.task, 'caption');
    await expectDone('beams');
    assert.match(await runStatus.textContent(), /beam search/);
    await page.getByLabel('Beams').fill('1');
  });
  await step('mock: VQA request and ?api= cross-origin target', async () => {
    // localhost vs 127.0.0.1 are different origins, so this goes through CORS.
    const other = PROXY.replace('127.0.0.1', 'localhost');
    await page.goto(`${other}/?api=${encodeURIComponent(BASE)}`);
    await page.locator('#ready[data-ready="ready"]').waitFor();
    assert.match(await page.locator('#api-target').textContent(), /API: http:\/\/127\.0\.0\.1/);
    await setMode('Question');
    await page.getByRole('button', { name: /“Shapes” for image/ }).click();
    await page.locator('#query-slot-host .slot-info', { hasText: 'shapes.png' }).waitFor();
    await page.getByLabel('Question about the image').fill('What shapes are there?');
    const req = page.waitForRequest((r) => r.url() === `${BASE}/generate_stream`);
    await generateBtn.click();
    const body = (await req).postDataJSON();
    assert.deepEqual({ task: body.task, q: body.query.question, ex: body.examples }, { task: 'vqa', q: 'What shapes are there?', ex: [] });
    await expectDone('vqa');
    await shot('09-vqa-cross-origin');
  });
}

await step('5 phone-sized viewport (375x740)', async () => {
  await page.setViewportSize({ width: 375, height: 740 });
  await page.evaluate(() => window.scrollTo(0, 0));
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(overflow <= 375, `no horizontal scrolling (scrollWidth ${overflow})`);
  await shot('05-mobile-375');
  await shot('05b-mobile-375-full', { fullPage: true });
  await page.emulateMedia({ colorScheme: 'dark' });
  await shot('05c-mobile-375-dark');
  await page.emulateMedia({ colorScheme: 'light' });
});

await step('no console errors and no external requests', async () => {
  assert.deepEqual(consoleErrors, [], 'console errors');
  assert.deepEqual(externalRequests, [], 'requests to other hosts');
});

await context.close();
proxy.close();
fs.rmSync(userDataDir, { recursive: true, force: true });

console.log('\n# summary');
for (const [name, r] of results) console.log(`  ${r.padEnd(6)} ${name}`);
const failed = results.filter(([, r]) => r !== 'ok').length;
console.log(failed ? `\n${failed} step(s) failed` : '\nall steps passed');
process.exit(failed ? 1 : 0);
