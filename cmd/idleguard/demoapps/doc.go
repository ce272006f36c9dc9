// Package demoapps holds the three sample relying parties that `idleguard
// demo` runs next to the provider, each its own OpenID Connect client with
// its own idle limit:
//
//   - portal: a server-rendered app (confidential client, coreos/go-oidc and
//     golang.org/x/oauth2) with server-side sessions keyed by sid, which
//     receives back-channel and front-channel logout;
//   - spa: a single-page app whose browser code runs the code flow with PKCE
//     itself (public client) and keeps its tokens in sessionStorage;
//   - video: an exempt app (confidential) that stays signed in when the
//     others are signed out by idle.
//
// Every page uses the provider's browser library (/static/idleguard.js) to
// show the one countdown shared by all apps of the session. They are
// teaching material: small, readable, and not hardened for production (the
// sessions live in memory, /debug/logouts is open to anyone).
package demoapps
