// Test harness: builds idleguard, runs `idleguard demo` (the real provider and
// the three demo apps) on free ports with a fresh database and limits of
// seconds, and drives Debian's Chromium through playwright-core.
import { spawn, execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The limits the demo runs with in these tests (seconds). */
export const LIMITS = { session: 20, portal: 20, spa: 15, video: 60, warnBefore: 5, heartbeat: 3, check: 5 };

async function freePorts(n) {
  const servers = await Promise.all(Array.from({ length: n }, () => new Promise((resolve, reject) => {
    const s = net.createServer().once('error', reject).listen(0, '127.0.0.1', () => resolve(s));
  })));
  const ports = servers.map((s) => s.address().port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

/**
 * Builds the idleguard binary (with the race detector: `make test` has just
 * compiled every package that way, so this is only a link, and a race in the
 * provider or the apps shows up) and starts `idleguard demo` with the test
 * limits. Returns its URLs, a temp dir and stop(), which returns the log.
 */
export async function startDemo({ args: extra = [] } = {}) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'idleguard-browser-'));
  const bin = path.join(dir, 'idleguard');
  await promisify(execFile)('go', ['build', '-race', '-o', bin, './cmd/idleguard'], { cwd: repo, maxBuffer: 1 << 24 });
  const [id, portal, spa, video] = await freePorts(4);
  const s = (n) => `${n}s`;
  const args = ['demo', '--db', path.join(dir, 'idleguard.db'), '--ports', [id, portal, spa, video].join(','),
    '--idle-timeout', s(LIMITS.session), '--portal-idle', s(LIMITS.portal), '--spa-idle', s(LIMITS.spa),
    '--video-idle', s(LIMITS.video), '--warn-before', s(LIMITS.warnBefore), '--heartbeat', s(LIMITS.heartbeat),
    '--check-interval', s(LIMITS.check), ...extra];
  const child = spawn(bin, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const log = createWriteStream(path.join(dir, 'demo.log'));
  child.stderr.pipe(log, { end: false });
  let out = '';
  const exited = new Promise((resolve) => child.once('close', resolve)); // exited, output read
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`idleguard demo did not start:\n${out}`)), 60_000);
    child.stdout.on('data', (d) => {
      out += d;
      log.write(d);
      if (out.includes('Ctrl-C stops the demo')) { clearTimeout(timer); resolve(); } // its last line at start
    });
    exited.then((code) => { clearTimeout(timer); reject(new Error(`idleguard demo exited (${code}):\n${out}`)); });
  });
  const url = (p) => `http://localhost:${p}`;
  return {
    dir, issuer: url(id), portal: url(portal), spa: url(spa), video: url(video),
    logFile: path.join(dir, 'demo.log'),
    async stop({ keep = false } = {}) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
      process.removeListener('exit', killOnExit);
      await new Promise((r) => log.end(r));
      const text = await readFile(path.join(dir, 'demo.log'), 'utf8');
      if (!keep && !text.includes('WARNING: DATA RACE')) await rm(dir, { recursive: true, force: true });
      return text;
    },
  };
}

export function launchBrowser() {
  return chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic'],
  });
}

/**
 * A new page in ctx that records uncaught page errors (asserted empty by
 * checkNoPageErrors). Every page runs under the provider's own headers,
 * CSP included.
 */
export async function newPage(ctx) {
  const page = await ctx.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e.message));
  return page;
}

export function checkNoPageErrors(...pages) {
  const errors = pages.flatMap((p) => p.errors.map((e) => `${p.url()}: ${e}`));
  if (errors.length) throw new Error(`uncaught errors in pages:\n${errors.join('\n')}`);
}

/**
 * Opens app (a demo app's URL) and signs in: through the provider's form
 * the first time in a context, silently (SSO) afterwards. Resolves when the
 * page shows the signed-in view and the idle library has read the status.
 */
export async function signIn(page, app, { timeout = 20_000 } = {}) {
  await page.goto(`${app}/`);
  await page.locator('[data-testid=welcome] :is(a.button, button.signin)').click({ timeout });
  const form = page.locator('input[name=password]');
  const signedIn = page.locator('[data-testid=signed-in]:visible');
  await form.or(signedIn).first().waitFor({ timeout });
  if (await form.isVisible()) {
    await page.fill('input[name=username]', 'demo');
    await form.fill('demo-password');
    await page.click('button[type=submit]');
  }
  await signedIn.waitFor({ timeout });
  await page.waitForFunction(() => window.idleguard?.status?.active, null, { timeout });
  return page.locator('#sid').textContent();
}

/** Seconds left by the page's idle library. */
export const remaining = (page) => page.evaluate(() => window.idleguard.remaining());

/**
 * Records when the page sent its requests to one of the provider's endpoints
 * (the browser's own send times, in ms since the epoch), as they finish.
 */
export function recordRequests(page, issuer, method, pathname) {
  const seen = [];
  const record = (r) => {
    const u = new URL(r.url());
    if (r.method() === method && u.origin === issuer && u.pathname === pathname) seen.push(r.timing().startTime);
  };
  page.on('requestfinished', record);
  page.on('requestfailed', record);
  return seen;
}

/** Writes a PNG to the test's directory and returns its path. */
export async function savePNG(dir, name, png) {
  const file = path.join(dir, name);
  await writeFile(file, png);
  return file;
}

/**
 * Decodes a PNG in the browser (a blank page) and returns the RGBA values at
 * the given points.
 */
export async function pixelsAt(ctx, png, points) {
  const page = await ctx.newPage();
  try {
    return await page.evaluate(async ({ b64, points }) => {
      const img = new Image();
      img.src = `data:image/png;base64,${b64}`;
      await img.decode();
      const c = Object.assign(document.createElement('canvas'), { width: img.width, height: img.height });
      const g = c.getContext('2d');
      g.drawImage(img, 0, 0);
      return { width: img.width, height: img.height,
        pixels: points.map(([x, y]) => Array.from(g.getImageData(Math.round(x), Math.round(y), 1, 1).data)) };
    }, { b64: png.toString('base64'), points });
  } finally {
    await page.close();
  }
}

/** Polls fn until it returns a truthy value or timeout ms pass. */
export async function eventually(fn, { timeout = 30_000, interval = 250, message = 'condition' } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${message}`);
    await sleep(interval);
  }
}
