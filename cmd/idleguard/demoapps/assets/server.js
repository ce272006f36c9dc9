// The portal's and the video app's page script: runs the browser library
// with the access token that the app's backend holds (GET /api/token).
import { explainLimit, showCountdown, clock } from './common.js';

const cfg = JSON.parse(document.getElementById('demo-config').textContent);

if (cfg.signedIn) {
  const { IdleGuard } = await import(`${cfg.issuer}/static/idleguard.js`);
  const $ = (id) => document.getElementById(id);
  let guard;
  const getAccessToken = async ({ forceRefresh } = {}) => {
    const res = await fetch(`/api/token${forceRefresh ? '?refresh=1' : ''}`, { cache: 'no-store' });
    if (res.status === 401) {
      // The backend heard of the end already (back-channel logout): go through logout with its reason.
      const body = await res.json().catch(() => ({}));
      if (body.reason) setTimeout(() => guard.logout(body.reason));
      return null;
    }
    if (!res.ok) throw new Error(`/api/token: HTTP ${res.status}`);
    return (await res.json()).access_token;
  };
  guard = new IdleGuard({
    issuer: cfg.issuer,
    clientId: cfg.clientId,
    getAccessToken,
    // The app's own logout route decides between end_session and just showing why (see serverapp.go).
    logoutUrl: cfg.logoutUrl,
    warnBefore: cfg.library.warnBefore,
    heartbeatInterval: cfg.library.heartbeatInterval,
    checkInterval: cfg.library.checkInterval,
    onStatus: (status) => explainLimit(status, cfg, $('limit'), $('limits')),
  });
  $('signout').addEventListener('click', () => guard.logout());
  window.idleguard = guard.start(); // for the curious (and the browser tests)
  showCountdown(guard, $('countdown'));

  if ($('played')) { // the video plays on: that is not activity, only touching the page is
    const started = performance.now();
    setInterval(() => {
      const secs = (performance.now() - started) / 1000;
      $('played').textContent = clock(secs);
      $('progress').value = secs;
    }, 1000);
  }
}
