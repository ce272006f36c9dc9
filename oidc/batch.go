package oidc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/idleguard/idleguard/activity"
)

// Bounds of POST /activity/batch: a resource server that reports once a
// second never needs more, and the body is read only after the client
// has authenticated.
const (
	maxBatchEvents = 1000
	maxBatchBody   = 4 << 20
)

// Reasons of a batch event refused on its own, besides the end reasons of
// sessions and invalid_token.
const (
	reasonMalformed = "malformed"
	reasonForeign   = "foreign"
)

// batchEvent is one event of POST /activity/batch: an access token as the
// API received it, or, for an API that keeps only the claims of the JWTs it
// validated, the token's jti with its sid and client_id. At is the time of
// the call (Unix seconds or RFC 3339; absent: now), clamped to [previous
// activity, now] like /activity's last_interaction.
type batchEvent struct {
	Token    jsonString      `json:"token"`
	JTI      string          `json:"jti"`
	SID      string          `json:"sid"`
	ClientID string          `json:"client_id"`
	At       json.RawMessage `json:"at"`

	malformed bool // not an event object
}

// batchResult is the answer for one event: whether it counted and its
// session is live; if not, why.
type batchResult struct {
	Live   bool   `json:"live"`
	Reason string `json:"reason,omitempty"`
}

// activityBatch is POST /activity/batch: activity of source api reported
// after the fact by an API that validates JWT access tokens itself. The
// caller authenticates with client_secret_basic as a client configured with
// resource_server: true, and may report only for the apps it serves. Each
// event is checked like a heartbeat and answered on its own, in order; a
// bad body or missing authentication fails the whole call.
//
// A jti event is believed as the resource server states it (the jti names
// its application session and expiry, so it costs no database read): the
// resource server saw the token, and only its own apps' sessions can be
// touched.
func (p *Provider) activityBatch(w http.ResponseWriter, r *http.Request) {
	noStore(w)
	rs, ok := p.resourceServer(w, r)
	if !ok {
		return
	}
	evs, err := readBatch(r.Body)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, oauthError{Error: "invalid_request", Description: err.Error()})
		return
	}
	results := make([]batchResult, len(evs))
	for i, ev := range evs {
		if results[i], err = p.batchEvent(r.Context(), rs, ev); err != nil {
			p.serverError(w, r, fmt.Errorf("activity batch event %d: %w", i, err))
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"results": results})
}

// readBatch decodes the body of a batch (bounded by bodyLimit). An event
// that is not an event object (a number, a field of the wrong type) comes
// back marked malformed, on its own; a body that is not a batch is an
// error. The whole batch is decoded at once, and only a batch with a
// malformed event event by event.
func readBatch(body io.Reader) ([]batchEvent, error) {
	data, err := io.ReadAll(body)
	var fast struct {
		Events []batchEvent `json:"events"`
	}
	if err == nil {
		err = json.Unmarshal(data, &fast)
	}
	var syntax *json.SyntaxError
	switch {
	case err == nil:
		return fast.Events, checkBatchLen(len(fast.Events), fast.Events == nil)
	case errors.As(err, &syntax) || !json.Valid(data):
		return nil, fmt.Errorf("the body must be JSON {\"events\": [...]} of at most %d bytes", maxBatchBody)
	}
	var slow struct {
		Events []json.RawMessage `json:"events"`
	}
	if err := json.Unmarshal(data, &slow); err != nil {
		return nil, errors.New(`events must be a list: {"events": [...]}`)
	}
	if err := checkBatchLen(len(slow.Events), slow.Events == nil); err != nil {
		return nil, err
	}
	evs := make([]batchEvent, len(slow.Events))
	for i, raw := range slow.Events {
		if json.Unmarshal(raw, &evs[i]) != nil {
			evs[i] = batchEvent{malformed: true}
		}
	}
	return evs, nil
}

func checkBatchLen(n int, missing bool) error {
	switch {
	case missing:
		return errors.New("events is required")
	case n > maxBatchEvents:
		return fmt.Errorf("at most %d events per batch", maxBatchEvents)
	}
	return nil
}

// resourceServer authenticates the caller of a resource server endpoint by
// client_secret_basic (RFC 6749 section 2.3.1) and requires a client with
// resource_server: true; otherwise it answers and returns false.
func (p *Provider) resourceServer(w http.ResponseWriter, r *http.Request) (*Client, bool) {
	user, pass, ok := r.BasicAuth()
	id, uerr := url.QueryUnescape(user)
	secret, perr := url.QueryUnescape(pass)
	c, known := p.clients[id]
	if !ok || uerr != nil || perr != nil || !known || !c.CheckSecret(secret) {
		w.Header().Set("WWW-Authenticate", `Basic realm="idleguard"`)
		writeJSON(w, http.StatusUnauthorized, oauthError{Error: "invalid_client", Description: "client authentication failed (client_secret_basic)"})
		return nil, false
	}
	if !c.ResourceServer {
		writeJSON(w, http.StatusForbidden, oauthError{Error: "unauthorized_client", Description: "the client is not configured with resource_server: true"})
		return nil, false
	}
	return c, true
}

// batchEvent checks and records one event for resource server rs. Only a
// failing store is an error; anything the event itself gets wrong is its
// result.
func (p *Provider) batchEvent(ctx context.Context, rs *Client, ev batchEvent) (batchResult, error) {
	at, err := parseInteraction(ev.At)
	if err != nil || ev.malformed {
		return batchResult{Reason: reasonMalformed}, nil
	}
	id, reason := p.eventTokenID(ev)
	if reason != "" {
		return batchResult{Reason: reason}, nil
	}
	accept := func(clientID string) bool {
		return rs.ServesApp(clientID) && (ev.ClientID == "" || ev.ClientID == clientID)
	}
	st, err := p.useTokenFor(ctx, id, activity.API, at, accept)
	st, err = p.whyExpired(ctx, id, st, err)
	switch {
	case st.ClientID != "" && !accept(st.ClientID):
		// Checked first: a foreign resource server learns nothing of a
		// session it does not serve, not even how it ended.
		return batchResult{Reason: reasonForeign}, nil
	case isTokenError(err):
		if end := activity.EndReasonOf(err); end != "" {
			return batchResult{Reason: string(end)}, nil
		}
		return batchResult{Reason: "invalid_token"}, nil
	case err != nil:
		return batchResult{}, err
	}
	return batchResult{Live: true}, nil
}

// eventTokenID returns the access token id an event names, or the reason
// it is refused: a token must be one this provider issued; a jti event must
// name its sid and client_id, and its jti that sid.
func (p *Provider) eventTokenID(ev batchEvent) (string, string) {
	switch {
	case ev.Token != "" && ev.JTI == "":
		id, err := p.accessTokenID(string(ev.Token))
		if err != nil {
			return "", "invalid_token"
		}
		return id, ""
	case ev.Token == "" && ev.JTI != "" && ev.SID != "" && ev.ClientID != "" && len(ev.JTI) <= 512:
		tid, err := parseTokenID(ev.JTI)
		if err != nil || tid.appSessionID == "" || activity.SessionID(tid.appSessionID) != ev.SID {
			return "", reasonMalformed
		}
		return ev.JTI, ""
	}
	return "", reasonMalformed
}

// jsonString is a JSON string decoded without encoding/json's character by
// character unquoting when it has no escape (an access token never has
// one).
type jsonString string

func (s *jsonString) UnmarshalJSON(data []byte) error {
	if len(data) >= 2 && data[0] == '"' && bytes.IndexByte(data, '\\') < 0 {
		*s = jsonString(data[1 : len(data)-1])
		return nil
	}
	var v string
	err := json.Unmarshal(data, &v)
	*s = jsonString(v)
	return err
}
