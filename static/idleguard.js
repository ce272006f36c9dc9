/*
 * idleguard.js: the browser half of idleguard's idle sessions.
 *
 *   import { IdleGuard } from 'https://id.example.com/static/idleguard.js';
 *   new IdleGuard({ issuer, clientId, getAccessToken, getIdToken, postLogoutRedirectUri }).start();
 *
 * Plain ES module, no dependencies, no build step. API reference: idleguard.md.
 *
 * Design (the rules are in docs/idle-model.md, "The browser's part"):
 *
 * - Only real interaction is activity. Trusted pointer, key, touch and wheel
 *   events are reported as POST /activity, at most once per heartbeatInterval
 *   (sooner only close to the deadline, so that a report never arrives too late)
 *   and only if there was interaction since the last report. Timers, synthetic
 *   events and status reads never count, so a forgotten tab sends nothing and
 *   is signed out on time.
 * - Reading the status does not extend the session. GET /session is a pure
 *   read for the provider, so the library may ask whenever it needs to (on
 *   start, on wake-up, at the warning point, at zero) without keeping anybody
 *   signed in.
 * - The provider owns the deadline. Every answer carries expires_in in seconds
 *   of the provider's clock; the library turns it into a deadline on the
 *   monotonic clock (performance.now() when the request left + expires_in), so
 *   a wrong or changed device clock can neither shorten nor lengthen a
 *   session. The wall clock serves only to notice that the machine slept (the
 *   local deadline is then stale and /session is read again); a heartbeat
 *   carries the interaction's age (interaction_age, monotonic), never a device
 *   timestamp, and the provider clamps it. Before the local countdown
 *   warns or signs out, the provider is asked again: another tab, app or device
 *   may have extended the session.
 * - The tabs of one app move as one. One leader tab (Web Locks, else an
 *   election over BroadcastChannel or localStorage) sends the heartbeats; every
 *   tab forwards its interactions and shares each status it reads, so all tabs
 *   show one countdown and one warning, and go through logout together.
 */

const DEFAULTS = {
  name: 'idleguard', warnBefore: 60, heartbeatInterval: 30, checkInterval: 60,
  events: ['pointerdown', 'keydown', 'touchstart', 'wheel'], trackMouseMove: false,
  showDialog: true, logoutTimeout: 3,
};
const RETRY_MS = 2000;    // pause between re-checks when the provider cannot be reached
const MAX_FAILURES = 3;   // unreachable re-checks after the local countdown hit zero before signing out
const LATE_MS = 5000;     // a tick this late means the machine slept or the tab was frozen
const LEASE_MS = 5000;    // fallback election: a leader unheard for this long is gone
const now = () => performance.now();
const within = (p, secs) => Promise.race([p, new Promise((r) => setTimeout(r, secs * 1000))]).catch(() => {});

class SessionOver extends Error {
  constructor(reason) { super(`idleguard: session over (${reason})`); this.reason = reason; }
}

export class IdleGuard {
  constructor(options = {}) {
    const o = { ...DEFAULTS, ...options };
    if (!o.issuer) throw new TypeError('IdleGuard: issuer is required');
    if (typeof o.getAccessToken !== 'function') throw new TypeError('IdleGuard: getAccessToken must be a function');
    for (const k of ['warnBefore', 'heartbeatInterval', 'checkInterval', 'logoutTimeout']) {
      o[k] = Number(o[k]);
      if (!(o[k] >= 0)) throw new TypeError(`IdleGuard: ${k} must be a number of seconds >= 0`);
    }
    o.issuer = String(o.issuer).replace(/\/+$/, '');
    for (const k of ['issuer', 'logoutUrl', 'endSessionEndpoint']) {
      try { if (o[k]) new URL(o[k], location.href); } catch { throw new TypeError(`IdleGuard: ${k} is not a URL`); }
    }
    this._o = o;
    this._id = Date.now().toString(36) + Math.random().toString(36).slice(2);
    this.isLeader = false;
    this._status = null;
  }

  /** Starts watching: listeners, leader election, first status read. Returns this. */
  start() {
    if (this._running) return this;
    Object.assign(this, {
      _running: true, _ending: false, _status: null, _zone: 0, _warned: false, _snoozed: false, _failures: 0,
      _deadline: 0, _statusSent: -Infinity, _heardAt: -Infinity, _checkedAt: -Infinity, _failedAt: -Infinity,
      _lastInput: -Infinity, _reported: -Infinity, _lastBeat: -Infinity, _lastFwd: -Infinity,
      _tickAt: now(), _tickWall: Date.now(), _tickDelay: 0, _pingAt: -Infinity,
    });
    this._ac = new AbortController();
    const opt = { capture: true, passive: true, signal: this._ac.signal };
    const events = new Set([...this._o.events, ...(this._o.trackMouseMove ? ['mousemove'] : [])]);
    for (const type of events) window.addEventListener(type, this._onInput, opt);
    // Wake-ups: the local deadline may be stale, read it again. Not in the capture phase, where
    // every element's focus would pass through window.
    const wake = { signal: this._ac.signal };
    document.addEventListener('visibilitychange', () => document.visibilityState === 'visible' && this._check(), wake);
    for (const type of ['pageshow', 'focus', 'online']) window.addEventListener(type, () => this._check(), wake);
    window.addEventListener('pagehide', () => this._fallback && this.isLeader && this._send({ t: 'bye' }), wake);
    document.addEventListener('focusin', (e) => { // keep focus inside the warning while it is open
      if (this._dialog && !this._dialog.root.contains(e.target)) this._dialog.button.focus();
    }, opt);
    this._openChannel();
    this._elect();
    this._tick(); // reads /session at once
    return this;
  }

  /** Stops watching in this tab: removes listeners and the warning, gives up leadership. */
  stop() {
    if (!this._running) return this;
    if (this._fallback && this.isLeader) this._send({ t: 'bye' });
    this._running = false;
    this.isLeader = false;
    this._ac.abort();
    this._unlock?.();
    this._unlock = null;
    this._closeChannel?.();
    this._post = null;
    for (const t of ['_tickTimer', '_beatTimer', '_fwdTimer']) { clearTimeout(this[t]); this[t] = null; }
    this._hideWarning(true);
    return this;
  }

  /** Counts as activity at once (not throttled, from this tab) and closes the warning in every tab. */
  stayActive() {
    if (!this._running || this._ending) return;
    this._lastInput = now();
    this._snooze(true);
    this._beat(true);
  }

  /** Sends every tab of the app through logout now, e.g. from the app's own sign-out button. */
  logout(reason = 'logout') { return this._end(reason); }

  /** The last status read by any tab, with `remaining` seconds; null before the first read. */
  get status() { return this._status && { ...this._status, remaining: this.remaining() }; }

  /** Seconds until the provider's deadline, counted down on the monotonic clock; null if unknown. */
  remaining() { return this._status ? Math.ceil(this._remainingMs() / 1000) : null; }

  // ---- time ---------------------------------------------------------------

  get _warnMs() { return this._o.warnBefore * 1000; }
  _zoneOf(ms) { return ms > this._warnMs ? 0 : ms > 0 ? 1 : 2; }
  _remainingMs() { return this._status ? Math.max(0, this._deadline - now()) : Infinity; }

  _tick = () => {
    clearTimeout(this._tickTimer);
    if (!this._running || this._ending) return;
    const t = now(), wall = Date.now();
    // On wake-up the monotonic clock may have stood still while the device slept, or the
    // timer simply fired very late: the local deadline is stale, so ask the provider.
    const slept = wall - this._tickWall - (t - this._tickAt) > LATE_MS ||
      (document.visibilityState === 'visible' && t - this._tickAt - this._tickDelay > LATE_MS);
    const every = (this._o.checkInterval * 1000 || Infinity) * (this.isLeader ? 1 : 2);
    const since = t - Math.max(this._checkedAt, this._heardAt);
    if (slept || since >= (this._status ? every : Math.min(every, 10000))) this._check();
    else this._evaluate();
    if (this._fallback) {
      if (this.isLeader && t - this._pingAt >= 1000) { this._pingAt = t; this._send({ t: 'lead' }); }
      else if (!this.isLeader && t - this._leaderSeen > LEASE_MS) this._setLeader(true);
    }
    // Wake up at the next whole second of the countdown, at the warning point, or for the next poll.
    const ms = this._remainingMs(), w = this._warnMs;
    let d = Math.max(0, every - since);
    if (ms > w) d = Math.min(d, ms - w); else if (ms > 0) d = Math.min(d, ms % 1000 || 1000);
    this._tickDelay = Math.min(1000, d) + 10;
    this._tickAt = t; this._tickWall = wall;
    this._tickTimer = setTimeout(this._tick, this._tickDelay);
  };

  // Decides what the countdown means now. A zone (0 fine, 1 warning, 2 zero) that the local
  // countdown reached but no status from the provider confirmed is checked before acting on.
  _evaluate() {
    if (!this._status || this._ending) return;
    const ms = this._remainingMs(), zone = this._zoneOf(ms);
    if (zone === 0) return this._hideWarning(true);
    if (zone > this._zone || zone === 2) {
      const t = now();
      if (this._checking) return;
      if (t - this._failedAt > RETRY_MS && (zone > this._zone || t - this._checkedAt >= 1000)) return void this._check();
      // Unreachable just now, or it said active with under a second left (it floors): ask again soon.
      if (zone === 2) return void (this._failures >= MAX_FAILURES && this._end('expired'));
      this._zone = zone;
    }
    this._warn(ms);
  }

  // ---- talking to the provider ----------------------------------------------

  _check() {
    if (!this._running || this._ending) return;
    if (!this._checking) {
      this._checkedAt = now();
      this._checking = this._request('GET', '/session').finally(() => { this._checking = null; });
    }
    return this._checking;
  }

  // Sends a heartbeat if there was interaction since the last one. Only the leader does,
  // unless forced (the "Stay signed in" action of this tab).
  async _beat(force) {
    clearTimeout(this._beatTimer); this._beatTimer = null;
    if (this._beating || !this._running || this._ending || !(force || this.isLeader)) return;
    if (!(this._lastInput > this._reported)) return;
    this._beating = true;
    this._lastBeat = now();
    await this._request('POST', '/activity', this._lastInput);
    this._beating = false;
    if (this.isLeader && this._lastInput > this._reported) this._queueBeat();
  }

  // Schedules the next heartbeat: heartbeatInterval after the last one, but early enough to land
  // before the warning point, and in the warning or close to zero within a second.
  _queueBeat() {
    if (!this.isLeader || !this._running || this._ending || !(this._lastInput > this._reported)) return;
    const t = now(), hb = this._o.heartbeatInterval * 1000;
    const wait = Math.max(this._lastBeat + Math.min(hb, 1000) - t,
      Math.min(this._lastBeat + hb - t, this._remainingMs() - this._warnMs - 1000));
    clearTimeout(this._beatTimer);
    if (wait <= 0) this._beat(); else this._beatTimer = setTimeout(() => this._beat(), wait);
  }

  // One call to the provider; applies the status it answers. `input` (monotonic time of the
  // interaction being reported) makes it a heartbeat. Never throws.
  async _request(method, path, input) {
    const sent = now();
    try {
      // interaction_age: seconds since the interaction on the monotonic clock, so the
      // device's wall clock plays no part; the provider clamps the time it stands for.
      const body = input === undefined ? undefined
        : JSON.stringify({ interaction_age: Math.max(0, Math.round((sent - input) / 100) / 10) });
      const status = await this._fetch(method, path, body);
      this._failures = 0; this._failedAt = -Infinity;
      if (input !== undefined) this._reported = Math.max(this._reported, input);
      this._apply(status, sent, true);
    } catch (e) {
      if (e instanceof SessionOver) return void this._end(e.reason);
      this._failures++; this._failedAt = now();
      console.warn('idleguard:', e);
      this._evaluate();
    }
  }

  // A 401 counts as "session over" only if it persists after asking the app once for a fresh token.
  async _fetch(method, path, body) {
    for (let retry = false; ; retry = true) {
      let token;
      try { token = await this._o.getAccessToken(retry ? { forceRefresh: true } : {}); } catch (e) {
        if (retry) throw new SessionOver('invalid_token');
        throw e;
      }
      if (!token) {
        if (retry) throw new SessionOver('invalid_token');
        throw new Error('getAccessToken returned no token');
      }
      const headers = { Authorization: `Bearer ${token}` };
      if (body) headers['Content-Type'] = 'application/json';
      const res = await fetch(this._o.issuer + path, {
        method, headers, body, mode: 'cors', credentials: 'omit', cache: 'no-store',
        signal: AbortSignal.timeout?.(15000),
      });
      if (res.status === 401) {
        // A 401 that names the reason means the session itself is over: no token can help.
        const reason = (await res.json().catch(() => ({}))).reason;
        if (reason) throw new SessionOver(reason);
        if (retry) throw new SessionOver('invalid_token');
        continue;
      }
      if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status}`);
      return res.json();
    }
  }

  // Takes a status read by this tab (sentAt: when its request left) or by another tab (sentAt
  // rebuilt from the age it sends). An answer overtaken by a newer one is dropped.
  _apply(s, sentAt, fromHere) {
    if (!s || typeof s !== 'object' || !this._running) return;
    if (s.active === false) return void this._end(s.reason || 'session_ended', fromHere);
    const secs = Number(s.expires_in ?? s.idle_remaining);
    if (!Number.isFinite(secs) || sentAt < this._statusSent) return;
    Object.assign(this, { _status: s, _statusSent: sentAt, _deadline: sentAt + secs * 1000, _heardAt: now(), _snoozed: false });
    this._zone = this._zoneOf(this._remainingMs());
    if (fromHere) {
      const reported = now() - this._reported;
      this._send({ t: 'status', status: s, age: now() - sentAt, ...(Number.isFinite(reported) && { reported }) });
    }
    const view = this.status;
    this._emit('status', view, 'onStatus', view);
    this._evaluate();
  }

  // ---- interaction ------------------------------------------------------------

  _onInput = (e) => {
    if (!e.isTrusted || !this._running || this._ending) return;
    // Inside the warning only its button acts (stayActive), so reading it or tabbing
    // around it never makes it vanish under the person's hands.
    if (this._dialog?.root.contains(e.target)) return;
    this._lastInput = now();
    if (this.isLeader) this._queueBeat(); else this._forward();
  };

  // Followers tell the other tabs about interaction, at most once a second.
  _forward() {
    if (this._fwdTimer) return;
    this._fwdTimer = setTimeout(() => {
      this._fwdTimer = null; this._lastFwd = now();
      this._send({ t: 'activity', ago: now() - this._lastInput });
    }, Math.max(0, this._lastFwd + 1000 - now()));
  }

  // ---- tabs -----------------------------------------------------------------

  _openChannel() {
    const key = `idleguard:${this._o.name}`;
    if (typeof BroadcastChannel === 'function') {
      const bc = new BroadcastChannel(key);
      bc.onmessage = (e) => this._onMessage(e.data);
      this._post = (m) => bc.postMessage(m);
      this._closeChannel = () => bc.close();
      return;
    }
    try { localStorage.getItem(key); } catch { return; } // no channel at all: a lone tab
    window.addEventListener('storage', (e) => {
      if (e.key !== key || !e.newValue) return;
      try { this._onMessage(JSON.parse(e.newValue)); } catch { /* not ours */ }
    }, { signal: this._ac.signal });
    this._post = (m) => { try { localStorage.setItem(key, JSON.stringify({ ...m, n: Math.random() })); } catch { /* full */ } };
    this._closeChannel = null;
  }

  _send(m) { this._post?.({ ...m, from: this._id }); }

  // Web Locks: the tab holding the lock leads until it closes; the browser then hands the
  // lock to the next waiting tab. Without Web Locks the tabs elect over the channel.
  _elect() {
    this._fallback = !navigator.locks?.request;
    if (this._fallback) {
      this._leaderSeen = now() - LEASE_MS + 1000; // claim in a second unless a leader answers
      this._send({ t: 'hello' });
      return;
    }
    navigator.locks.request(`idleguard:${this._o.name}`, { signal: this._ac.signal }, () => {
      if (!this._running) return;
      this._setLeader(true);
      return new Promise((resolve) => { this._unlock = resolve; });
    }).catch(() => { /* aborted by stop() */ });
  }

  _setLeader(on) {
    if (this.isLeader === on) return;
    this.isLeader = on;
    if (!on) return void clearTimeout(this._beatTimer);
    if (this._fallback) { this._pingAt = now(); this._send({ t: 'lead' }); }
    this._queueBeat(); // interaction the old leader did not report yet
  }

  _onMessage(m) {
    if (!m || m.from === this._id || !this._running || this._ending) return;
    const t = now();
    switch (m.t) {
      case 'activity':
        if (!Number.isFinite(m.ago)) break;
        this._lastInput = Math.max(this._lastInput, t - m.ago);
        if (this.isLeader) this._queueBeat();
        break;
      case 'status':
        if (Number.isFinite(m.reported)) this._reported = Math.max(this._reported, t - m.reported);
        if (Number.isFinite(m.age)) this._apply(m.status, t - m.age, false);
        break;
      case 'stay': this._snooze(false); break;
      case 'logout': this._end(m.reason, false); break;
      case 'hello': if (this._fallback && this.isLeader) this._send({ t: 'lead' }); break;
      case 'lead':
        if (!this._fallback) break;
        this._leaderSeen = t;
        if (this.isLeader && m.from < this._id) this._setLeader(false); // two leaders: the lower id stays
        break;
      case 'bye': if (this._fallback) this._leaderSeen = -Infinity; break;
    }
  }

  // ---- warning ----------------------------------------------------------------

  _warn(ms) {
    if (!this._warned) {
      this._warned = true;
      const secs = Math.ceil(ms / 1000);
      const r = this._emit('warning', { remaining: secs }, 'onWarning', secs);
      this._wantDialog = this._o.showDialog && r !== false;
      this._queueBeat(); // interaction not yet reported must land now, not after the deadline
    }
    if (this._wantDialog && !this._snoozed) this._showDialog(ms);
  }

  _snooze(tellOthers) {
    this._snoozed = true; // until the next status: the warning comes back if the session was not extended
    this._hideWarning(false);
    if (tellOthers) this._send({ t: 'stay' });
  }

  _showDialog(ms) {
    const s = this._status;
    // Past the absolute deadline activity cannot help: say so instead of offering to stay.
    const final = s.max_expires_in != null && s.max_expires_in < (s.idle_remaining ?? Infinity);
    let d = this._dialog;
    if (!d) {
      injectStyle();
      const el = (tag, props, ...kids) => { const e = Object.assign(document.createElement(tag), props); e.append(...kids); return e; };
      d = { title: el('h2', { id: 'idleguard-warning-title' }), text: el('p', { id: 'idleguard-warning-text' }) };
      d.button = el('button', { type: 'button', className: 'idleguard-stay' });
      d.button.addEventListener('click', () => {
        if (this._final) { this._wantDialog = false; this._hideWarning(false); } else this.stayActive();
      });
      const box = el('div', { id: 'idleguard-warning', className: 'idleguard-warning' }, d.title, d.text, d.button);
      for (const [k, v] of Object.entries({ role: 'alertdialog', 'aria-modal': 'true',
        'aria-labelledby': d.title.id, 'aria-describedby': d.text.id })) box.setAttribute(k, v);
      box.addEventListener('keydown', (e) => {
        if (e.key === 'Tab') { e.preventDefault(); d.button.focus(); } // the one control keeps focus
        if (e.key === 'Escape') { e.preventDefault(); d.button.click(); } // never a silent dismissal
      });
      d.root = el('div', { id: 'idleguard-backdrop', className: 'idleguard-backdrop' }, box);
      this._returnFocus = document.activeElement;
      this._dialog = d;
      document.body.append(d.root);
      d.button.focus();
    }
    this._final = final;
    const secs = Math.ceil(ms / 1000), time = `${Math.floor(secs / 60)}:${String(secs % 60).padStart(2, '0')}`;
    d.title.textContent = final ? 'Your session is ending' : 'Are you still there?';
    d.text.textContent = final
      ? `You will be signed out in ${time} because your session has reached its maximum length. Save your work now.`
      : `You will be signed out in ${time} because of inactivity.`;
    d.button.textContent = final ? 'OK' : 'Stay signed in';
  }

  _hideWarning(newPhase) {
    if (newPhase) this._warned = false;
    const d = this._dialog;
    if (!d) return;
    this._dialog = null;
    const hadFocus = d.root.contains(document.activeElement);
    d.root.remove();
    if (hadFocus && this._returnFocus?.isConnected) this._returnFocus.focus({ preventScroll: true });
  }

  // ---- logout -------------------------------------------------------------------

  async _end(reason, tellOthers = true) {
    if (!this._running || this._ending) return;
    this._ending = true;
    if (tellOthers) this._send({ t: 'logout', reason });
    this.stop();
    const target = this._logoutTarget(reason);
    await within(this._emit('logout', { reason }, 'onLogout', reason), this._o.logoutTimeout);
    location.replace(await target);
  }

  async _logoutTarget(reason) {
    const o = this._o;
    if (o.logoutUrl) {
      const u = new URL(o.logoutUrl, location.href);
      if (reason) u.searchParams.set('reason', reason);
      return u.href;
    }
    const idToken = typeof o.getIdToken === 'function' ? await within((async () => o.getIdToken())(), o.logoutTimeout) : o.idToken;
    const u = new URL(o.endSessionEndpoint || `${o.issuer}/end_session`, location.href);
    const params = { id_token_hint: idToken, client_id: o.clientId, post_logout_redirect_uri: o.postLogoutRedirectUri, state: o.state };
    for (const [k, v] of Object.entries(params)) if (v) u.searchParams.set(k, v);
    return u.href;
  }

  // Calls the option callback and dispatches a cancelable `idleguard:<name>` event on window.
  // Returns false if the event was canceled, else what the callback returned.
  _emit(name, detail, callback, ...args) {
    let result;
    try { result = this._o[callback]?.(...args); } catch (e) { console.error(e); }
    const ev = new CustomEvent(`idleguard:${name}`, { detail, cancelable: true });
    window.dispatchEvent(ev);
    return ev.defaultPrevented ? false : result;
  }
}

const CSS = `
.idleguard-backdrop{position:fixed;inset:0;z-index:2147483647;display:flex;align-items:center;justify-content:center;
  background:rgba(15,23,42,.6);font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
.idleguard-warning{box-sizing:border-box;max-width:26rem;margin:1rem;padding:1.5rem 1.75rem;border-radius:.75rem;
  background:#fff;color:#111827;box-shadow:0 20px 50px rgba(0,0,0,.35);text-align:left}
.idleguard-warning h2{margin:0 0 .5rem;font-size:1.25rem;line-height:1.3;color:inherit}
.idleguard-warning p{margin:0 0 1.25rem;font-variant-numeric:tabular-nums}
.idleguard-warning button{font:inherit;font-weight:600;padding:.6rem 1.25rem;border:0;border-radius:.5rem;
  background:#1d4ed8;color:#fff;cursor:pointer}
.idleguard-warning button:hover{background:#1e40af}
.idleguard-warning button:focus-visible{outline:3px solid #f59e0b;outline-offset:2px}`;

// A constructed style sheet passes a strict Content-Security-Policy; older browsers get a <style>.
function injectStyle() {
  if (injectStyle.done) return;
  injectStyle.done = true;
  try {
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS);
    document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
  } catch {
    const style = document.createElement('style');
    style.id = 'idleguard-style';
    style.textContent = CSS;
    document.head.append(style);
  }
}
