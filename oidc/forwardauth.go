package oidc

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/idleguard/idleguard/activity"
)

// Bounds of a gateway check's audience list: the gateway's configuration
// writes it, and nothing longer is ever needed.
const (
	maxForwardQuery     = 2048
	maxForwardAudiences = 16
)

// Headers of a gateway check's answer. The gateway copies the first five
// to the API on success (they replace whatever the caller sent under these
// names) and X-Idleguard-Reason to the caller on refusal.
const (
	headerSubject   = "X-Idleguard-Subject"
	headerSession   = "X-Idleguard-Session"
	headerClient    = "X-Idleguard-Client"
	headerScope     = "X-Idleguard-Scope"
	headerExpiresIn = "X-Idleguard-Expires-In"
	headerReason    = "X-Idleguard-Reason"
)

// reasonWrongAudience is X-Idleguard-Reason of a valid token used at an API
// of another app (403).
const reasonWrongAudience = "wrong_audience"

// forwardAuth is the gateway check (GET /forward-auth?aud=CLIENT[,CLIENT...],
// any method): nginx auth_request, Traefik ForwardAuth, Caddy forward_auth
// and Envoy's HTTP ext_authz ask it before passing a request to an API, with
// the caller's Authorization header as they received it.
//
//   - 200, with the X-Idleguard-* headers of the person, when the bearer
//     token is valid now, its session is live, and its app is one of aud.
//     Only then is the call activity (source api) of that app session.
//   - 401 with an invalid_token challenge and X-Idleguard-Reason (the
//     session's end reason, or invalid_token) for a missing, bad, expired or
//     revoked token or an ended session.
//   - 403 (wrong_audience) for a valid token of an app that is not in aud:
//     an exempt app's token never opens another app's API.
//
// The endpoint needs no client authentication (a gateway holds no secret
// for it): it tells the holder of a token only what the token already
// carries, and never counts as activity when it refuses. It never reads the
// body. The answer is never cached: it holds at this instant only.
func (p *Provider) forwardAuth(w http.ResponseWriter, r *http.Request) {
	noStore(w)
	audiences, err := p.forwardAudiences(r.URL.RawQuery)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, oauthError{Error: "invalid_request", Description: err.Error()})
		return
	}
	token := bearer(r)
	id, err := p.accessTokenID(token)
	if err != nil {
		desc := "access token invalid"
		if token == "" {
			desc = "access token missing"
		}
		refuseForward(w, errors.New(desc))
		return
	}
	accept := func(clientID string) bool { return slices.Contains(audiences, clientID) }
	st, err := p.useTokenFor(r.Context(), id, activity.API, zeroTime, accept)
	st, err = p.whyExpired(r.Context(), id, st, err)
	switch {
	case isTokenError(err):
		refuseForward(w, err)
	case err != nil:
		p.serverError(w, r, fmt.Errorf("forward auth: %w", err))
	case !accept(st.ClientID):
		w.Header().Set(headerReason, reasonWrongAudience)
		writeChallenge(w, http.StatusForbidden, "insufficient_scope", "the access token was issued to another application", nil)
	default:
		h := w.Header()
		h.Set(headerSubject, st.UserID)
		h.Set(headerSession, st.SID)
		h.Set(headerClient, st.ClientID)
		h.Set(headerScope, strings.Join(st.Scopes, " "))
		h.Set(headerExpiresIn, strconv.FormatInt(*seconds(st.Deadline.Sub(st.Now)), 10))
		w.WriteHeader(http.StatusOK)
	}
}

// refuseForward answers a gateway check 401 invalid_token, naming in
// X-Idleguard-Reason the end reason of the token's session, or
// invalid_token when the token itself is refused.
func refuseForward(w http.ResponseWriter, err error) {
	reason := string(activity.EndReasonOf(err))
	if reason == "" {
		reason = "invalid_token"
	}
	w.Header().Set(headerReason, reason)
	writeChallenge(w, http.StatusUnauthorized, "invalid_token", err.Error(), nil)
}

// forwardAudiences reads a gateway check's aud parameter: one parameter, a
// comma-separated list of at most maxForwardAudiences configured client
// ids. A repeated aud is refused rather than merged: a gateway that appends
// the caller's own path and query to the check's URL (Envoy's path_prefix)
// must not let the caller add an audience.
func (p *Provider) forwardAudiences(rawQuery string) ([]string, error) {
	if len(rawQuery) > maxForwardQuery {
		return nil, fmt.Errorf("the query is longer than %d bytes", maxForwardQuery)
	}
	q, _ := url.ParseQuery(rawQuery) // a malformed pair is dropped, never added to aud
	if len(q["aud"]) != 1 {
		return nil, errors.New("give aud once: the client ids whose tokens this API accepts, comma-separated")
	}
	list := strings.Split(q["aud"][0], ",")
	if len(list) > maxForwardAudiences {
		return nil, fmt.Errorf("aud lists more than %d clients", maxForwardAudiences)
	}
	for i, id := range list {
		list[i] = strings.TrimSpace(id)
		if _, ok := p.clients[list[i]]; !ok {
			return nil, fmt.Errorf("aud names %q, which is not a configured client", list[i])
		}
	}
	return list, nil
}
