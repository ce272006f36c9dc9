// The SPA: a public client that does everything in the browser.
//
//   /            signed in: who you are, the shared countdown; else why you were signed out
//   /callback    the end of the code flow: checks state, exchanges the code (PKCE), checks the ID token
//   /logout      where the idle library sends every tab when the session is over
//
// Tokens live in sessionStorage (this tab only; each tab signs in on its own,
// silently when the provider's session exists).
import { explainLimit, showCountdown, reasonText } from './common.js';

const cfg = await (await fetch('/config.json', { cache: 'no-store' })).json();
const meta = await (await fetch(`${cfg.issuer}/.well-known/openid-configuration`)).json(); // discovery
const $ = (id) => document.getElementById(id);

const tokens = {
  get: () => JSON.parse(sessionStorage.getItem('spa.tokens') || 'null'),
  set: (t) => sessionStorage.setItem('spa.tokens', JSON.stringify(t)),
  clear: () => sessionStorage.removeItem('spa.tokens'),
};

const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
  .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
const random = (n = 32) => b64url(crypto.getRandomValues(new Uint8Array(n)));
const jwtClaims = (jwt) => {
  const b = atob(jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'));
  return JSON.parse(new TextDecoder().decode(Uint8Array.from(b, (c) => c.charCodeAt(0))));
};

// ---- signing in: authorization code flow with PKCE (S256, WebCrypto) ------

async function signIn() {
  const verifier = random(32);
  const challenge = b64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
  const state = random(16), nonce = random(16);
  sessionStorage.setItem('spa.pending', JSON.stringify({ state, nonce, verifier }));
  const u = new URL(meta.authorization_endpoint);
  u.search = new URLSearchParams({
    response_type: 'code', client_id: cfg.clientId, redirect_uri: `${cfg.origin}/callback`,
    scope: 'openid profile email offline_access', state, nonce,
    code_challenge: challenge, code_challenge_method: 'S256',
  });
  location.assign(u);
}

async function tokenRequest(params) {
  const res = await fetch(meta.token_endpoint, {
    method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ client_id: cfg.clientId, ...params }),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(`token endpoint: ${body.error || res.status} ${body.error_description || ''}`);
  return body;
}

function keep(t, prev = {}) {
  tokens.set({
    access: t.access_token, id: t.id_token || prev.id, refresh: t.refresh_token || prev.refresh,
    expiresAt: Date.now() + (t.expires_in || 0) * 1000, sid: prev.sid || jwtClaims(t.id_token).sid,
  });
}

async function finishSignIn(params) {
  const pending = JSON.parse(sessionStorage.getItem('spa.pending') || 'null');
  sessionStorage.removeItem('spa.pending');
  history.replaceState(null, '', '/'); // the code stays neither in the address bar nor in history
  if (params.get('error')) throw new Error(`the provider refused: ${params.get('error')} ${params.get('error_description') || ''}`);
  if (!pending || params.get('state') !== pending.state) throw new Error('this sign-in was not started here; please sign in again');
  const t = await tokenRequest({
    grant_type: 'authorization_code', code: params.get('code'),
    redirect_uri: `${cfg.origin}/callback`, code_verifier: pending.verifier,
  });
  // The ID token came straight from the token endpoint (OpenID Connect Core 3.1.3.7 allows TLS
  // in place of the signature check there); its claims must still be ours.
  const c = jwtClaims(t.id_token);
  const aud = [].concat(c.aud);
  if (c.iss !== cfg.issuer || !aud.includes(cfg.clientId) || c.nonce !== pending.nonce || c.exp * 1000 < Date.now()) {
    throw new Error('the ID token is not for this app');
  }
  sessionStorage.removeItem('spa.signedOut');
  keep(t);
}

// ---- tokens for the idle library -------------------------------------------

let refreshing = null;
function refresh() {
  refreshing ??= (async () => {
    const prev = tokens.get();
    if (!prev?.refresh) throw new Error('no refresh token');
    keep(await tokenRequest({ grant_type: 'refresh_token', refresh_token: prev.refresh }), prev);
    return tokens.get().access;
  })().finally(() => { refreshing = null; });
  return refreshing;
}

// The library calls this before each request to the provider. A refresh is no activity at the
// provider, so refreshing here keeps nobody signed in. With forceRefresh (after a 401) a refused
// refresh throws, and the library ends the session.
async function getAccessToken({ forceRefresh } = {}) {
  const t = tokens.get();
  if (!t) return null;
  if (forceRefresh) return refresh();
  if (t.refresh && t.expiresAt - Date.now() < 5000) {
    try { return await refresh(); } catch { /* GET /session takes an expired token and says why */ }
  }
  return tokens.get()?.access;
}

async function sessionStatus(accessToken) {
  const res = await fetch(`${cfg.issuer}/session`, { headers: { Authorization: `Bearer ${accessToken}` } });
  return res.ok ? res.json() : { active: false };
}

// ---- logout ------------------------------------------------------------------

// Every tab comes here (the library's logoutUrl) when the session is over. Only "logout" (the person
// pressed Sign out, here or in another tab) goes through end_session, which ends the whole session,
// exempt apps included, and runs front-channel logout. Any other reason means the provider ended the
// session already; going through end_session then would end the exempt video app too, which must
// outlive an idle end. So the tab asks the provider why (GET /session, never activity) and says so.
async function logout(params) {
  const t = tokens.get();
  const expected = sessionStorage.getItem('spa.logoutKey');
  history.replaceState(null, '', '/');
  if (!t || !expected || params.get('key') !== expected) return; // not sent by our guard: ignore
  tokens.clear();
  sessionStorage.removeItem('spa.logoutKey');
  let reason = params.get('reason') || 'session_ended';
  if (reason === 'logout') {
    sessionStorage.setItem('spa.signedOut', JSON.stringify({ reason }));
    const u = new URL(meta.end_session_endpoint);
    u.search = new URLSearchParams({
      id_token_hint: t.id, client_id: cfg.clientId, post_logout_redirect_uri: `${cfg.origin}/`, state: random(8),
    });
    location.replace(u);
    return new Promise(() => {}); // leaving
  }
  try {
    const s = await sessionStatus(t.access);
    if (s.active === false && s.reason) reason = s.reason;
  } catch { /* keep the library's reason */ }
  sessionStorage.setItem('spa.signedOut', JSON.stringify({ reason }));
}

// ---- pages -----------------------------------------------------------------------

function show(id) {
  for (const s of ['loading', 'signed-in', 'signed-out', 'welcome']) $(s).hidden = s !== id;
}

function showSignedOut() {
  const out = JSON.parse(sessionStorage.getItem('spa.signedOut') || 'null');
  if (!out) return show('welcome');
  $('why').textContent = reasonText(out.reason);
  $('reason').textContent = out.reason;
  show('signed-out');
}

async function showSignedIn(t) {
  let token = await getAccessToken();
  let res = await fetch(meta.userinfo_endpoint, { headers: { Authorization: `Bearer ${token}` } });
  if (res.status === 401) { // the session is over, or only this token expired
    const s = await sessionStatus(token);
    if (s.active === false) {
      tokens.clear();
      sessionStorage.setItem('spa.signedOut', JSON.stringify({ reason: s.reason || 'session_ended' }));
      return showSignedOut();
    }
    token = await refresh();
    res = await fetch(meta.userinfo_endpoint, { headers: { Authorization: `Bearer ${token}` } });
  }
  if (!res.ok) throw new Error(`userinfo: HTTP ${res.status}`);
  const me = await res.json();
  $('name').textContent = me.name || me.preferred_username || me.sub;
  $('email').textContent = me.email || me.sub;
  $('sid').textContent = t.sid;
  show('signed-in');

  const { IdleGuard } = await import(`${cfg.issuer}/static/idleguard.js`);
  const key = random(12);
  sessionStorage.setItem('spa.logoutKey', key);
  const guard = new IdleGuard({
    issuer: cfg.issuer,
    clientId: cfg.clientId,
    getAccessToken,
    logoutUrl: `${cfg.origin}/logout?key=${key}`,
    warnBefore: cfg.library.warnBefore,
    heartbeatInterval: cfg.library.heartbeatInterval,
    checkInterval: cfg.library.checkInterval,
    onStatus: (status) => explainLimit(status, cfg, $('limit'), $('limits')),
  });
  $('signout').addEventListener('click', () => guard.logout());
  window.idleguard = guard.start(); // for the curious (and the browser tests)
  showCountdown(guard, $('countdown'));
}

$('nav').replaceChildren(...cfg.limits.apps.map((a) => Object.assign(document.createElement('a'), {
  href: `${a.url}/`, textContent: a.name, ...(a.name === cfg.app && { ariaCurrent: 'page' }),
})));
for (const b of document.querySelectorAll('button.signin')) b.addEventListener('click', signIn);

try {
  if (location.pathname === '/callback') await finishSignIn(new URLSearchParams(location.search));
  if (location.pathname === '/logout') await logout(new URLSearchParams(location.search));
  if (location.search) history.replaceState(null, '', '/'); // e.g. ?state= after end_session
  const t = tokens.get();
  if (t) await showSignedIn(t); else showSignedOut();
} catch (e) {
  $('error').textContent = `Sign-in failed: ${e.message}`;
  $('error').hidden = false;
  showSignedOut();
}
