// Package oidc is idleguard's protocol face: the OpenID Connect provider
// (built on zitadel/oidc's op package), the login pages, the activity and
// session-status endpoints, logout propagation and the admin API.
package oidc
