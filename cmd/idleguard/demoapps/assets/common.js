// Helpers shared by the three demo apps' pages: formatting, the countdown
// and the explanation of which app's limit is in force.

/** 75 -> "1:15". */
export function clock(secs) {
  if (secs == null) return '–:––';
  const s = Math.max(0, Math.round(secs)), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const mm = h ? String(m).padStart(2, '0') : String(m);
  return `${h ? h + ':' : ''}${mm}:${String(r).padStart(2, '0')}`;
}

/** 90 -> "1m 30s", 600 -> "10m". */
export function duration(secs) {
  const s = Math.round(secs), m = Math.floor(s / 60), r = s % 60;
  if (!m) return `${r}s`;
  return r ? `${m}m ${r}s` : `${m}m`;
}

const REASONS = {
  idle_timeout: 'Nobody used any app of this session for the idle limit in force.',
  max_lifetime: 'The session reached its maximum length.',
  logout: 'You signed out, here or in another app.',
  app_idle_timeout: 'This app was not used for its own idle limit.',
  admin: 'An administrator ended the session.',
  refresh_reuse: 'A refresh token was used twice, a sign of theft, so the session was ended.',
  code_reuse: 'A sign-in code was used twice, a sign of theft, so the session was ended.',
  session_ended: 'The provider ended the session.',
  invalid_token: "The provider no longer accepts this app's token.",
  expired: 'The session ran out while the provider could not be reached.',
};

/** A sentence for a logout reason (the logout token's reason claim, or the library's). */
export function reasonText(reason) { return REASONS[reason] || 'The session ended.'; }

/**
 * Explains the idle limit in force (status.idle_timeout, seconds) for the app
 * cfg.app: which limit sets it, and why. Fills the table of every limit,
 * marking the ones that govern.
 */
export function explainLimit(status, cfg, textEl, tableEl) {
  const limit = status.idle_timeout, apps = cfg.limits.apps, provider = cfg.limits.provider;
  const me = apps.find((a) => a.name === cfg.app);
  let governs;
  if (me?.exempt) {
    governs = new Set([me.name]);
    textEl.textContent = `Limit for this app: ${duration(limit)}, its own. It is exempt: it does not pull the shared ` +
      'limit down, and it stays signed in when the other apps sign you out for inactivity.';
  } else {
    const setters = apps.filter((a) => !a.exempt && a.idle > 0 && Math.abs(a.idle - limit) < 1).map((a) => a.name);
    const byProvider = Math.abs(provider - limit) < 1;
    governs = new Set([...setters, ...(byProvider ? ['provider'] : [])]);
    let why;
    if (setters.length && !byProvider) {
      why = `, set by ${setters.join(' and ')}: the strictest app opened in this session wins, for every app.`;
    } else if (byProvider) {
      why = `: the provider's ceiling (session.idle_timeout)${setters.length ? ` and ${setters.join(' and ')}'s own limit` : ''}; ` +
        'no app opened in this session is stricter.';
    } else {
      why = ', set by the provider.';
    }
    textEl.textContent = `Idle limit in force: ${duration(limit)}${why}`;
  }
  const rows = [['provider', 'session.idle_timeout', provider, false],
    ...apps.map((a) => [a.name, a.exempt ? 'exempt, own limit' : 'idle_timeout', a.idle, a.exempt])];
  const head = document.createElement('tr');
  for (const h of ['', 'idle limit', 'kind']) head.append(Object.assign(document.createElement('th'), { textContent: h }));
  const trs = rows.map(([name, kind, secs]) => {
    const tr = document.createElement('tr');
    if (governs.has(name)) tr.className = 'governs';
    for (const t of [name, secs ? duration(secs) : 'none', kind]) tr.append(Object.assign(document.createElement('td'), { textContent: t }));
    return tr;
  });
  tableEl.replaceChildren(head, ...trs);
}

/** Shows guard.remaining() in el, several times a second. */
export function showCountdown(guard, el) {
  const tick = () => { el.textContent = clock(guard.remaining()); };
  tick();
  return setInterval(tick, 250);
}
