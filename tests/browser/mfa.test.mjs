// Second factors in real headless Chromium against `idleguard demo --mfa
// always` (a person who has a factor is asked for it at every sign-in): a
// real WebAuthn ceremony with Chromium's virtual authenticator (CDP
// WebAuthn.addVirtualAuthenticator) to register a passkey on /account, use
// it as the second factor, sign in with it alone, and remove it; the
// authenticator-app setup and the second-factor page on a phone-size
// screen, used with the keyboard only.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { startDemo, launchBrowser, newPage, checkNoPageErrors, savePNG } from './harness.mjs';

let demo, browser;
let failed = false;
const TEST = { timeout: 120_000 };
const PHONE = { width: 390, height: 844 };

async function withContext(fn, options = {}) {
  const ctx = await browser.newContext(options);
  try {
    return await fn(ctx);
  } catch (e) {
    failed = true;
    throw e;
  } finally {
    await ctx.close();
  }
}

/** RFC 6238 code (SHA-1, 6 digits, 30 s) of a base32 secret at time t (ms). */
function totp(secret, t = Date.now()) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of secret) bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(t / 30_000)));
  const h = createHmac('sha1', key).update(counter).digest();
  const o = h[h.length - 1] & 0xf;
  return String((h.readUInt32BE(o) & 0x7fffffff) % 1_000_000).padStart(6, '0');
}

/** Opens the portal and gets to the provider's sign-in form. */
async function openLogin(page) {
  await page.goto(`${demo.portal}/`);
  await page.locator('[data-testid=welcome] :is(a.button, button.signin)').click();
  await page.locator('input[name=password]').waitFor();
}

async function password(page) {
  await page.fill('input[name=username]', 'demo');
  await page.fill('input[name=password]', 'demo-password');
  await page.click('button[type=submit]');
}

async function signedIn(page) {
  try {
    await page.locator('[data-testid=signed-in]:visible').waitFor({ timeout: 20_000 });
  } catch (e) {
    console.log(`# not signed in at ${page.url()}: ${(await page.locator('body').innerText()).slice(0, 500)}`);
    throw e;
  }
}

describe('second factors in Chromium', { concurrency: false }, () => {
  before(async () => {
    demo = await startDemo({ args: ['--mfa', 'always'] });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    const keep = failed || Boolean(process.env.IDLEGUARD_KEEP_TEST_DIR);
    const log = await demo?.stop({ keep });
    if (keep) console.log(`# demo log and screenshots kept in ${demo?.dir}`);
    assert.doesNotMatch(log ?? '', /WARNING: DATA RACE/, `the race detector found a data race, see ${demo?.logFile}`);
  });

  it('registers a passkey, uses it as second factor, signs in with it alone, removes it', TEST, () => withContext(async (ctx) => {
    const page = await newPage(ctx);
    const cdp = await ctx.newCDPSession(page);
    await cdp.send('WebAuthn.enable');
    const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', { options: {
      protocol: 'ctap2', transport: 'internal', hasResidentKey: true, hasUserVerification: true,
      isUserVerified: true, automaticPresenceSimulation: true } });

    await openLogin(page);
    await password(page); // no factor yet: the password is enough
    await signedIn(page);

    await page.goto(`${demo.issuer}/account`);
    await page.fill('#passkey-name', 'virtual key');
    await page.click('text=Add a passkey');
    await page.getByText('Your passkey was added.').waitFor();
    assert.match(await page.locator('.factors').innerText(), /virtual key/);
    const { credentials } = await cdp.send('WebAuthn.getCredentials', { authenticatorId });
    assert.equal(credentials.length, 1);
    assert.equal(credentials[0].isResidentCredential, true, 'a discoverable credential');

    // Signed out (a new browser session), the password is not enough any more.
    await ctx.clearCookies();
    await openLogin(page);
    await password(page);
    await page.getByRole('button', { name: 'Use a passkey' }).click();
    await signedIn(page);
    assert.ok((await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials[0].signCount >= 1, 'the authenticator signed');

    // Without username or password.
    await ctx.clearCookies();
    await openLogin(page);
    await page.getByRole('button', { name: 'Sign in with a passkey' }).click();
    await signedIn(page);

    // Removed on the account page (the sign-in is fresh), it opens nothing.
    await page.goto(`${demo.issuer}/account`);
    await page.getByRole('button', { name: 'Remove passkey virtual key' }).click();
    await page.getByText('The passkey was removed.').waitFor();
    await ctx.clearCookies();
    await openLogin(page);
    await page.getByRole('button', { name: 'Sign in with a passkey' }).click();
    await page.getByText('This passkey is not registered for your account here.').waitFor();
    assert.equal(new URL(page.url()).origin, demo.issuer, 'nobody signed in');
    checkNoPageErrors(page);
  }));

  it('authenticator app on a phone, keyboard only', TEST, () => withContext(async (ctx) => {
    const page = await newPage(ctx);
    await openLogin(page);
    await password(page);
    await signedIn(page);

    await page.goto(`${demo.issuer}/account`);
    const setup = page.getByRole('button', { name: 'Set up authenticator app' });
    await setup.focus();
    await page.keyboard.press('Enter');
    const code = page.getByLabel('Code');
    await code.waitFor();
    assert.equal(await code.getAttribute('autocomplete'), 'one-time-code');
    const qr = page.getByRole('img', { name: 'QR code for your authenticator app' });
    const box = await qr.boundingBox();
    assert.ok(box.x >= 0 && box.x + box.width <= PHONE.width, 'the QR code fits the phone');
    const png = await page.screenshot({ fullPage: true });
    console.log(`# ${await savePNG(demo.dir, 'account-totp-phone.png', png)}`);
    const secret = await page.locator('code.secret').innerText();
    assert.ok(await code.evaluate((el) => el === document.activeElement), 'the code field has the focus');
    await page.keyboard.type(totp(secret));
    await page.keyboard.press('Enter');
    await page.getByText('Save your recovery codes').waitFor();
    assert.equal(await page.locator('.codes li').count(), 10);

    await ctx.clearCookies();
    await openLogin(page);
    await password(page);
    const factor = page.getByLabel('Code');
    await factor.waitFor();
    assert.ok(await factor.evaluate((el) => el === document.activeElement), 'the code field has the focus');
    const shot = await page.screenshot({ fullPage: true });
    console.log(`# ${await savePNG(demo.dir, 'second-factor-phone.png', shot)}`);
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= PHONE.width, `no sideways scrolling (${width}px)`);
    await page.keyboard.type('000000');
    await page.keyboard.press('Enter');
    await page.getByRole('alert').filter({ hasText: 'not right' }).waitFor();
    await page.getByLabel('Code').fill('');
    await page.keyboard.type(totp(secret, Date.now() + 30_000)); // the next step: within the drift, not used yet
    await page.keyboard.press('Enter');
    await signedIn(page);
    checkNoPageErrors(page);
  }, { viewport: PHONE, deviceScaleFactor: 2, isMobile: true, hasTouch: true }));
});
