// Passkey ceremonies of idleguard's own pages (the second-factor page, the
// login page's "Sign in with a passkey", the account page). No inline
// script: the pages' CSP allows only scripts from the provider.
//
// A button in <div class="passkey" data-passkey="PURPOSE"> asks the
// provider for a ceremony (POST /passkey/begin), runs it with
// navigator.credentials, and posts the answer as a form to the page that
// finishes it, which answers with a page (so every error is said there).

const b64u = {
  decode(s) {
    const b = atob(s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (s.length % 4)) % 4));
    return Uint8Array.from(b, (c) => c.charCodeAt(0)).buffer;
  },
  encode(buf) {
    let s = '';
    for (const x of new Uint8Array(buf)) s += String.fromCharCode(x);
    return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  },
};

function creationOptions(o) {
  return {
    ...o,
    challenge: b64u.decode(o.challenge),
    user: { ...o.user, id: b64u.decode(o.user.id) },
    excludeCredentials: (o.excludeCredentials || []).map((c) => ({ ...c, id: b64u.decode(c.id) })),
  };
}

function requestOptions(o) {
  return {
    ...o,
    challenge: b64u.decode(o.challenge),
    allowCredentials: (o.allowCredentials || []).map((c) => ({ ...c, id: b64u.decode(c.id) })),
  };
}

// answer is the credential as JSON (WebAuthn Level 3's toJSON shape).
function answer(cred) {
  const r = cred.response;
  const response = { clientDataJSON: b64u.encode(r.clientDataJSON) };
  if (r.attestationObject) {
    response.attestationObject = b64u.encode(r.attestationObject);
    if (r.getTransports) response.transports = r.getTransports();
  } else {
    response.authenticatorData = b64u.encode(r.authenticatorData);
    response.signature = b64u.encode(r.signature);
    if (r.userHandle) response.userHandle = b64u.encode(r.userHandle);
  }
  return JSON.stringify({
    id: cred.id, rawId: b64u.encode(cred.rawId), type: cred.type, response,
    authenticatorAttachment: cred.authenticatorAttachment || undefined,
    clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
  });
}

function post(action, fields) {
  const form = document.createElement('form');
  form.method = 'post';
  form.action = action;
  form.hidden = true;
  for (const [name, value] of Object.entries(fields)) {
    const input = document.createElement('input');
    input.type = 'hidden';
    input.name = name;
    input.value = value;
    form.append(input);
  }
  document.body.append(form);
  form.submit();
}

async function run(box, button, error) {
  const purpose = box.dataset.passkey;
  const fields = { csrf: box.dataset.csrf, purpose };
  if (box.dataset.request) fields.authRequestID = box.dataset.request;
  const begin = await fetch('/passkey/begin', { method: 'POST', body: new URLSearchParams(fields), credentials: 'same-origin' });
  const c = await begin.json();
  if (!begin.ok) throw new Error(c.error || 'The passkey prompt could not be prepared.');
  const creating = purpose === 'register' || purpose === 'account';
  const cred = creating
    ? await navigator.credentials.create({ publicKey: creationOptions(c.options.publicKey) })
    : await navigator.credentials.get({ publicKey: requestOptions(c.options.publicKey) });
  if (!cred) throw new Error('No passkey was chosen.');
  const done = { ...fields, ceremony: c.ceremony, credential: answer(cred) };
  const name = document.getElementById('passkey-name');
  if (name && name.value) done.name = name.value;
  const finish = { account: '/account/passkeys', confirm: '/account/confirm/passkey' };
  post(finish[purpose] || '/login/passkey', done);
}

for (const box of document.querySelectorAll('.passkey[data-passkey]')) {
  const button = box.querySelector('button');
  const error = box.querySelector('[role=alert]');
  if (!window.PublicKeyCredential) {
    error.textContent = 'This browser cannot use passkeys.';
    error.hidden = false;
    button.disabled = true;
    continue;
  }
  button.addEventListener('click', async () => {
    button.disabled = true;
    error.hidden = true;
    try {
      await run(box, button, error);
    } catch (e) {
      error.textContent = e.name === 'NotAllowedError' ? 'The passkey prompt was closed or timed out. Try again.' : e.message;
      error.hidden = false;
      button.disabled = false;
      button.focus();
    }
  });
}
