// Front-channel logout (OpenID Connect Front-Channel Logout 1.0): the
// provider's signed-out page loads /frontchannel-logout?iss=…&sid=… in a
// hidden iframe. The iframe shares this tab's sessionStorage for the SPA's
// origin, so it can forget the tokens of that session.
const params = new URLSearchParams(location.search);
const cfg = await (await fetch('/config.json', { cache: 'no-store' })).json();
const tokens = JSON.parse(sessionStorage.getItem('spa.tokens') || 'null');
if (params.get('iss') === cfg.issuer && tokens && tokens.sid === params.get('sid')) {
  sessionStorage.removeItem('spa.tokens');
  sessionStorage.setItem('spa.signedOut', JSON.stringify({ reason: 'logout' }));
}
document.body.textContent = 'Signed out of the SPA.';
