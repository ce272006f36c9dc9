// The idle story in real headless Chromium, against the real provider and
// the demo apps (`idleguard demo` with limits of seconds, see LIMITS): the
// browser library's heartbeats, tabs, warning and logout, back-channel and
// front-channel logout. Each test has its own browser context, so its own
// provider session; the tests run concurrently to share the idle waits.
import { describe, it, before, after } from 'node:test';
import http from 'node:http';
import assert from 'node:assert/strict';
import {
  LIMITS, startDemo, launchBrowser, newPage, signIn, remaining, recordRequests, checkNoPageErrors,
  savePNG, pixelsAt, eventually, sleep,
} from './harness.mjs';

let demo, browser;
let failed = false;

// Generous bounds: the machine may be loaded, so nothing here waits for an exact moment.
const IDLE_END = (LIMITS.spa + 25) * 1000; // the spa's limit, the sweep, the library's next read
const TEST = { timeout: 120_000 };

/** Runs fn with a fresh browser context, closed afterwards. */
async function withContext(fn, { track = true } = {}) {
  const ctx = await browser.newContext();
  try {
    return await fn(ctx);
  } catch (e) {
    if (track) failed = true;
    throw e;
  } finally {
    await ctx.close();
  }
}

async function debugLogouts(app) {
  return (await fetch(`${app}/debug/logouts`)).json();
}

const signedOutAt = (page, app) => page.locator('[data-testid=signed-out]:visible').waitFor({ timeout: IDLE_END })
  .then(() => assert.equal(new URL(page.url()).origin, app));

async function assertNoSignedInContent(page) {
  await page.waitForLoadState();
  await sleep(1500); // let the page's script run
  assert.equal(await page.locator('[data-testid=signed-in]:visible').count(), 0, `signed-in content at ${page.url()}`);
  assert.doesNotMatch(await page.locator('body').innerText(), /Hello, Demo User/);
}

describe('idleguard demo in Chromium', { concurrency: true }, () => {
  before(async () => {
    demo = await startDemo();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    const keep = failed || Boolean(process.env.IDLEGUARD_KEEP_TEST_DIR);
    const log = await demo?.stop({ keep });
    if (keep) console.log(`# demo log and screenshot kept in ${demo?.dir}`);
    // The binary is built with -race: a data race anywhere in the provider or the apps fails the suite.
    assert.doesNotMatch(log ?? '', /WARNING: DATA RACE/, `the race detector found a data race, see ${demo?.logFile}`);
  });

  it('sends heartbeats only after interaction, at most once per heartbeatInterval', TEST, () => withContext(async (ctx) => {
    const page = await newPage(ctx);
    const beats = recordRequests(page, demo.issuer, 'POST', '/activity');
    const reads = recordRequests(page, demo.issuer, 'GET', '/session');
    await signIn(page, demo.spa);

    await sleep(4000); // nobody touches the page
    assert.equal(beats.length, 0, 'no heartbeat without interaction');
    assert.ok(reads.length >= 1, 'the status was read');

    const start = Date.now();
    while (Date.now() - start < 7000) { // a click or a key every 200 ms for 7 s
      if (Math.random() < 0.5) await page.mouse.click(20, 400); else await page.keyboard.press('Shift');
      await sleep(200);
    }
    const stopped = Date.now();
    await sleep(LIMITS.heartbeat * 1000 + 1500); // the last interaction's report
    beats.sort((x, y) => x - y);
    assert.ok(beats[0] - start < 2000, `the first interaction is reported at once (after ${beats[0] - start} ms)`);
    const gaps = beats.slice(1).map((t, i) => Math.round(t - beats[i]));
    assert.ok(gaps.every((g) => g >= LIMITS.heartbeat * 1000 - 250), `heartbeats at least ${LIMITS.heartbeat}s apart: ${gaps}`);
    // 7 s of interaction: one at once, at most two more, and one for what came after the last.
    assert.ok(beats.length >= 2 && beats.length <= 4, `${beats.length} heartbeats for 7 s of interaction`);
    assert.ok(beats.at(-1) - stopped < LIMITS.heartbeat * 1000 + 1000, 'the last interaction is reported');

    const count = beats.length;
    await sleep(4000);
    assert.equal(beats.length, count, 'no heartbeat once the interaction stopped');
    checkNoPageErrors(page);
  }));

  it('shares one countdown and one warning between two tabs; "Stay signed in" in one dismisses both', TEST, () => withContext(async (ctx) => {
    const a = await newPage(ctx);
    const sid = await signIn(a, demo.spa);
    const b = await newPage(ctx);
    assert.equal(await signIn(b, demo.spa), sid, 'the second tab signed in silently to the same session');

    const leaders = await Promise.all([a, b].map((p) => p.evaluate(() => window.idleguard.isLeader)));
    assert.deepEqual(leaders.sort(), [false, true], 'exactly one tab leads');
    const [ra, rb] = await Promise.all([remaining(a), remaining(b)]);
    assert.ok(Math.abs(ra - rb) <= 1, `one countdown: ${ra} and ${rb}`);
    const [ca, cb] = await Promise.all([a, b].map((p) => p.locator('#countdown').textContent()));
    assert.match(ca, /^0:\d\d$/);

    // Idle: both tabs warn, at the same moment.
    const dialogs = [a, b].map((p) => p.getByRole('alertdialog', { name: 'Are you still there?' }));
    await Promise.all(dialogs.map((d) => d.waitFor({ timeout: IDLE_END })));
    const texts = await Promise.all([a, b].map((p) => p.locator('#idleguard-warning-text').textContent()));
    const secs = texts.map((t) => Number(/in 0:(\d\d)/.exec(t)?.[1]));
    assert.ok(secs.every((s) => s >= 0 && s <= LIMITS.warnBefore) && Math.abs(secs[0] - secs[1]) <= 1,
      `one warning, same time left: ${texts}`);
    for (const p of [a, b]) assert.equal(await p.locator('#idleguard-warning').count(), 1, 'one dialog per tab');

    // Labelled and described, focus on its button, Tab keeps it there.
    const box = a.locator('#idleguard-warning');
    assert.equal(await box.getAttribute('role'), 'alertdialog');
    assert.equal(await box.getAttribute('aria-modal'), 'true');
    assert.equal(await a.locator(`#${await box.getAttribute('aria-labelledby')}`).textContent(), 'Are you still there?');
    assert.match(await a.locator(`#${await box.getAttribute('aria-describedby')}`).textContent(),
      /You will be signed out in 0:\d\d because of inactivity\./);
    for (const p of [a, b]) {
      assert.equal(await p.evaluate(() => document.activeElement?.textContent), 'Stay signed in', 'focus is on the button');
    }
    await a.keyboard.press('Tab');
    assert.equal(await a.evaluate(() => document.activeElement?.textContent), 'Stay signed in', 'Tab keeps focus in the dialog');

    // What the person sees: the dialog in front, styled, over a dimmed page.
    const button = await a.getByRole('button', { name: 'Stay signed in' }).boundingBox();
    const dialog = await box.boundingBox();
    const png = await a.screenshot();
    const file = await savePNG(demo.dir, 'warning-dialog.png', png);
    const { width, pixels } = await pixelsAt(ctx, png, [
      [button.x + 6, button.y + button.height / 2], // the button: blue
      [dialog.x + 8, dialog.y + dialog.height - 8], // the dialog's white card
      [5, 600], // the page behind, dimmed by the backdrop
    ]);
    const [btn, card, behind] = pixels;
    assert.ok(width >= 800, `screenshot ${file}`);
    assert.ok(btn[2] > 150 && btn[0] < 90 && btn[1] < 130, `button is blue: ${btn}`);
    assert.ok(card.slice(0, 3).every((c) => c > 240), `dialog card is white: ${card}`);
    assert.ok(behind.slice(0, 3).every((c) => c < 180), `page behind is dimmed: ${behind}`);
    assert.ok(dialog.y > 0 && dialog.y + dialog.height < (a.viewportSize()?.height ?? 720), 'dialog within the viewport');

    // Enter in the other tab: both warnings go, the session is extended.
    await b.keyboard.press('Enter');
    await Promise.all(dialogs.map((d) => d.waitFor({ state: 'detached', timeout: 5000 })));
    await eventually(async () => (await remaining(a)) > LIMITS.warnBefore + 3 && (await remaining(b)) > LIMITS.warnBefore + 3,
      { timeout: 5000, message: 'the countdown to restart in both tabs' });
    assert.ok(cb.length > 0);
    checkNoPageErrors(a, b);
  }));

  it('signs out every tab when both idle, and the portal gets its back-channel logout; the exempt video stays', TEST, () => withContext(async (ctx) => {
    const portal = await newPage(ctx);
    const sid = await signIn(portal, demo.portal);
    const a = await newPage(ctx);
    const b = await newPage(ctx);
    const video = await newPage(ctx);
    for (const [p, app] of [[a, demo.spa], [b, demo.spa], [video, demo.video]]) {
      assert.equal(await signIn(p, app), sid, `${app} joined the same session`);
    }

    await Promise.all([signedOutAt(a, demo.spa), signedOutAt(b, demo.spa), signedOutAt(portal, demo.portal)]);
    for (const p of [a, b, portal]) {
      assert.equal(await p.locator('#reason').textContent(), 'idle_timeout');
      assert.match(await p.locator('#why').textContent(), /Nobody used any app/);
    }
    const logouts = await eventually(async () => {
      const mine = (await debugLogouts(demo.portal)).filter((l) => l.sid === sid);
      return mine.length ? mine : null;
    }, { timeout: 10_000, message: "the portal's back-channel logout" });
    assert.equal(logouts.length, 1);
    assert.equal(logouts[0].reason, 'idle_timeout');

    // The exempt app outlives the idle end: still signed in after its next status read.
    const videoURL = video.url();
    await sleep((LIMITS.check + 2) * 1000);
    assert.equal(video.url(), videoURL);
    assert.ok(await video.locator('[data-testid=signed-in]').isVisible(), 'the video app is still signed in');
    assert.equal(await video.evaluate(() => window.idleguard.status?.active), true);
    assert.deepEqual(await debugLogouts(demo.video).then((l) => l.filter((x) => x.sid === sid)), [], 'the video app was not told');

    // Back shows no signed-in page.
    for (const p of [a, portal]) {
      await p.goBack();
      await assertNoSignedInContent(p);
    }
    checkNoPageErrors(a, b, portal, video);
  }));

  it('sends a page through logout at once when the laptop wakes after the deadline', TEST, () => withContext(async (ctx) => {
    await ctx.clock.install();
    const page = await newPage(ctx);
    const reads = recordRequests(page, demo.issuer, 'GET', '/session');
    await signIn(page, demo.spa);
    const token = await page.evaluate(() => JSON.parse(sessionStorage.getItem('spa.tokens')).access);

    // The laptop sleeps: the page's clock stands still, the provider's runs on past the deadline.
    for (let tries = 0; ; tries++) { // pauseAt may not go back: aim a second ahead, again if that was too little
      try {
        await page.clock.pauseAt(await page.evaluate(() => Date.now() + 1000));
        break;
      } catch (e) {
        if (tries > 5 || !/past/.test(e.message)) throw e;
      }
    }
    await eventually(async () => {
      const s = await (await fetch(`${demo.issuer}/session`, { headers: { Authorization: `Bearer ${token}` } })).json();
      return s.active === false;
    }, { timeout: IDLE_END, interval: 500, message: 'the provider to end the session' });
    assert.ok(await page.locator('[data-testid=signed-in]').isVisible(), 'asleep, the page has noticed nothing yet');

    // It wakes up: the clocks jump by the time asleep.
    const readsBefore = reads.length;
    const woke = Date.now();
    await page.clock.fastForward((LIMITS.spa + 10) * 1000);
    await page.clock.resume();
    await page.locator('[data-testid=signed-out]:visible').waitFor({ timeout: 10_000 });
    assert.ok(Date.now() - woke < 10_000, `logged out ${Date.now() - woke} ms after waking`);
    assert.ok(reads.length > readsBefore, 'the status was read again on waking');
    assert.equal(await page.locator('#reason').textContent(), 'idle_timeout');
    checkNoPageErrors(page);
  }));

  it('keeps an idle tab signed in while the person is active in another', TEST, () => withContext(async (ctx) => {
    const a = await newPage(ctx);
    await signIn(a, demo.spa);
    const b = await newPage(ctx);
    await signIn(b, demo.spa);
    await b.evaluate(() => {
      window.warnings = 0;
      window.addEventListener('idleguard:warning', () => { window.warnings++; });
    });
    const urlB = b.url();

    const start = Date.now();
    while (Date.now() - start < (LIMITS.spa + 7) * 1000) { // longer than the limit, active in tab a only
      await a.mouse.click(20, 400);
      await sleep(1000);
    }
    assert.equal(b.url(), urlB);
    assert.ok(await b.locator('[data-testid=signed-in]').isVisible(), 'the idle tab is still signed in');
    assert.equal(await b.evaluate(() => window.warnings), 0, 'and was never warned');
    assert.ok(await remaining(b) > LIMITS.warnBefore, 'its countdown follows the active tab');
    checkNoPageErrors(a, b);
  }));

  it('runs front-channel logout: the end-session page loads each app\'s iframe, then the post-logout redirect', TEST, () => withContext(async (ctx) => {
    const portal = await newPage(ctx);
    const sid = await signIn(portal, demo.portal);
    const spa = await newPage(ctx);
    await signIn(spa, demo.spa);
    const frames = [];
    const mains = [];
    spa.on('response', (r) => {
      if (r.request().resourceType() === 'document' && r.frame() !== spa.mainFrame()) frames.push({ url: r.url(), status: r.status() });
    });
    spa.on('framenavigated', (f) => { if (f === spa.mainFrame()) mains.push(f.url()); });

    await spa.getByRole('button', { name: 'Sign out' }).click();
    await spa.locator('[data-testid=signed-out]:visible').waitFor({ timeout: 20_000 });
    assert.equal(await spa.locator('#reason').textContent(), 'logout');
    assert.ok(mains.some((u) => u.startsWith(`${demo.issuer}/logged-out`)), `through the end-session page: ${mains}`);
    assert.equal(new URL(mains.at(-1)).origin, demo.spa, 'landed on the post-logout redirect');

    for (const app of [demo.portal, demo.spa]) {
      const f = frames.find((x) => x.url.startsWith(`${app}/frontchannel-logout?`));
      assert.ok(f, `iframe of ${app} loaded: ${JSON.stringify(frames)}`);
      const q = new URL(f.url).searchParams;
      assert.equal(q.get('iss'), demo.issuer);
      assert.equal(q.get('sid'), sid);
      assert.equal(f.status, 200);
    }
    // The portal ended its own session (front-channel and back-channel, reason logout); its open
    // tab learns of it at its library's next status read.
    await portal.locator('[data-testid=signed-out]:visible').waitFor({ timeout: 20_000 });
    assert.equal(await portal.locator('#reason').textContent(), 'logout');
    await eventually(async () => (await debugLogouts(demo.portal)).some((l) => l.sid === sid && l.reason === 'logout'),
      { timeout: 10_000, message: "the portal's back-channel logout" });

    await spa.goBack();
    await assertNoSignedInContent(spa);
    checkNoPageErrors(portal, spa);
  }));

  it('signs in under the provider\'s own CSP', TEST, () => withContext(async (ctx) => {
    const page = await newPage(ctx);
    await signIn(page, demo.portal, { timeout: 8000 });
  }, { track: false }));

  it('binds a cross-site POST /authorize to the browser\'s existing token, so another tab\'s sign-in still completes', TEST, () => withContext(async (ctx) => {
    // Tab A starts signing in to the portal and stops at the provider's form.
    const a = await newPage(ctx);
    const started = a.waitForRequest((r) => r.url().startsWith(`${demo.issuer}/authorize?`));
    await a.goto(`${demo.portal}/`);
    await a.locator('[data-testid=welcome] :is(a.button, button.signin)').click();
    const params = new URL((await started).url()).searchParams;
    await a.locator('input[name=password]').waitFor();

    // Tab B: another site (127.0.0.1 is not localhost's site) posts an
    // authorization request; Chromium withholds the Lax binding cookie.
    const esc = (v) => v.replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
    const inputs = [...params].map(([k, v]) => `<input type="hidden" name="${esc(k)}" value="${esc(v)}">`).join('');
    const site = http.createServer((req, res) => {
      res.setHeader('Content-Type', 'text/html');
      res.end(`<form method="post" action="${demo.issuer}/authorize">${inputs}</form><script>document.forms[0].submit()</script>`);
    });
    await new Promise((r) => site.listen(0, '127.0.0.1', r));
    try {
      const b = await newPage(ctx);
      await b.goto(`http://127.0.0.1:${site.address().port}/`);
      await b.locator('input[name=password]').waitFor(); // the form for B's own request, in this browser

      // Tab A signs in: its request still belongs to this browser.
      await a.fill('input[name=username]', 'demo');
      await a.fill('input[name=password]', 'demo-password');
      await a.click('button[type=submit]');
      await a.locator('[data-testid=signed-in]:visible').waitFor({ timeout: 20_000 });
      const bindings = (await ctx.cookies(demo.issuer)).filter((c) => c.name === 'idleguard_browser');
      assert.equal(bindings.length, 1, 'one binding cookie per browser');
      assert.equal(bindings[0].httpOnly, true);
      assert.equal(bindings[0].sameSite, 'Lax');
      checkNoPageErrors(a, b);
    } finally {
      site.close();
    }
  }));
});
