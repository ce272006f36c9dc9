package oidc

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/require"
	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/session"
)

// withResourceServer adds a resource server (a receiver of Shared
// Signals) that serves the named apps; its secret is "<id>-secret".
func withSignalReceiver(id string, serves ...string) envOption {
	return func(cfg *Config) {
		cfg.Clients = append(cfg.Clients, &Client{ID: id, SecretHash: HashSecret(id + "-secret"), AuthMethod: zoidc.AuthMethodBasic,
			GrantTypes: []zoidc.GrantType{zoidc.GrantTypeClientCredentials}, ResourceServer: true, Serves: serves,
			AccessTokenTTL: time.Hour, Policy: activity.ClientPolicy{Sources: activity.DefaultSources}})
	}
}

// serviceToken is a client's own access token (client_credentials).
func (e *env) serviceToken(clientID string) string {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.issuer+"/oauth/token", strings.NewReader("grant_type=client_credentials"))
	require.NoError(e.t, err)
	req.SetBasicAuth(clientID, clientID+"-secret")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	var out struct {
		AccessToken string `json:"access_token"`
	}
	require.NoError(e.t, json.NewDecoder(resp.Body).Decode(&out))
	require.NotEmpty(e.t, out.AccessToken, "status %d", resp.StatusCode)
	return out.AccessToken
}

// ssf calls an SSF endpoint with a JSON body and returns the status and
// the raw answer.
func (e *env) ssf(method, path, token, payload string) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.issuer+path, strings.NewReader(payload))
	require.NoError(e.t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(e.t, err)
	return resp.StatusCode, data
}

// createStream creates a stream for the receiver's token and returns its
// configuration.
func (e *env) createStream(token, payload string) streamConfig {
	e.t.Helper()
	code, data := e.ssf(http.MethodPost, "/ssf/streams", token, payload)
	require.Equal(e.t, http.StatusCreated, code, "%s", data)
	var st streamConfig
	require.NoError(e.t, json.Unmarshal(data, &st))
	return st
}

const requestRevoked = `{"events_requested":["` + session.EventSessionRevoked + `"]}`

// pollSETs polls a stream once, returning immediately.
func (e *env) pollSETs(token, streamID string, ack ...string) map[string]string {
	e.t.Helper()
	body, _ := json.Marshal(map[string]any{"returnImmediately": true, "ack": append([]string{}, ack...)})
	code, data := e.ssf(http.MethodPost, "/ssf/poll/"+streamID, token, string(body))
	require.Equal(e.t, http.StatusOK, code, "%s", data)
	var out pollResponse
	require.NoError(e.t, json.Unmarshal(data, &out))
	return out.Sets
}

// verifySET checks a SET against RFC 8417 and SSF 1.0 section 4: typ
// secevent+jwt, a signature by a key of the provider's JWKS (fetched over
// HTTP, as a receiver does), iss, aud, iat, jti, no sub, no exp, one event.
func (e *env) verifySET(raw, audience string) map[string]any {
	e.t.Helper()
	jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.RS256, jose.ES256, jose.EdDSA})
	require.NoError(e.t, err)
	require.Equal(e.t, "secevent+jwt", jws.Signatures[0].Header.ExtraHeaders[jose.HeaderType])
	resp, err := http.Get(e.issuer + "/keys")
	require.NoError(e.t, err)
	var jwks jose.JSONWebKeySet
	require.NoError(e.t, json.NewDecoder(resp.Body).Decode(&jwks))
	resp.Body.Close()
	keys := jwks.Key(jws.Signatures[0].Header.KeyID)
	require.Len(e.t, keys, 1, "the SET's kid is in the JWKS")
	payload, err := jws.Verify(keys[0])
	require.NoError(e.t, err)
	var claims map[string]any
	require.NoError(e.t, json.Unmarshal(payload, &claims))
	require.Equal(e.t, e.issuer, claims["iss"])
	require.Equal(e.t, audience, claims["aud"])
	require.NotEmpty(e.t, claims["jti"])
	require.EqualValues(e.t, e.clock.Now().Unix(), claims["iat"])
	require.NotContains(e.t, claims, "sub", "SSF 1.0 section 4.1.2: no sub claim")
	require.NotContains(e.t, claims, "exp", "SSF 1.0 section 4.1.7: no exp claim")
	require.Len(e.t, claims["events"], 1)
	return claims
}

func TestSSFTransmitterMetadata(t *testing.T) {
	e := newEnv(t)
	resp, err := http.Get(e.issuer + "/.well-known/ssf-configuration")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var meta map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&meta))
	resp.Body.Close()
	discovery := e.rp("mail").provider
	var oidcMeta struct {
		JWKS string `json:"jwks_uri"`
	}
	require.NoError(t, discovery.Claims(&oidcMeta))
	require.Equal(t, map[string]any{
		"spec_version":               "1_0",
		"issuer":                     e.issuer,
		"jwks_uri":                   oidcMeta.JWKS,
		"delivery_methods_supported": []any{session.MethodPush, session.MethodPoll},
		"configuration_endpoint":     e.issuer + "/ssf/streams",
		"status_endpoint":            e.issuer + "/ssf/status",
		"verification_endpoint":      e.issuer + "/ssf/verify",
		"authorization_schemes":      []any{map[string]any{"spec_urn": "urn:ietf:rfc:6749"}},
		"default_subjects":           "ALL",
	}, meta)
}

func TestSSFStreamLifecycle(t *testing.T) {
	e := newEnv(t, withSignalReceiver("orders", "mail"))
	tok := e.serviceToken("orders")

	st := e.createStream(tok, `{"description":"orders API"}`)
	require.Equal(t, e.issuer, st.Issuer)
	require.Equal(t, "orders", st.Audience)
	require.Equal(t, session.MethodPoll, st.Delivery.Method, "no delivery member means poll")
	require.Equal(t, e.issuer+"/ssf/poll/"+st.StreamID, st.Delivery.EndpointURL)
	require.Empty(t, st.EventsDelivered, "nothing requested, nothing delivered")
	require.Equal(t, eventsSupported, st.EventsSupported)

	code, data := e.ssf(http.MethodPatch, "/ssf/streams", tok, `{"stream_id":"`+st.StreamID+`","events_requested":["`+session.EventSessionRevoked+`","urn:example:unknown"]}`)
	require.Equal(t, http.StatusOK, code, "%s", data)
	require.NoError(t, json.Unmarshal(data, &st))
	require.Equal(t, []string{session.EventSessionRevoked}, st.EventsDelivered, "unknown event types are ignored")
	require.Equal(t, "orders API", st.Description, "a PATCH leaves absent members alone")

	code, data = e.ssf(http.MethodPut, "/ssf/streams", tok, `{"stream_id":"`+st.StreamID+`","delivery":{"method":"`+session.MethodPush+
		`","endpoint_url":"https://orders.example/ssf","authorization_header":"Bearer xyz"},"events_requested":["`+session.EventSessionRevoked+`"]}`)
	require.Equal(t, http.StatusOK, code, "%s", data)
	st = streamConfig{}
	require.NoError(t, json.Unmarshal(data, &st))
	require.Equal(t, deliveryBody{Method: session.MethodPush, EndpointURL: "https://orders.example/ssf", AuthorizationHeader: "Bearer xyz"}, st.Delivery)
	require.Empty(t, st.Description, "a PUT drops absent receiver-supplied members")

	code, data = e.ssf(http.MethodGet, "/ssf/streams?stream_id="+st.StreamID, tok, "")
	require.Equal(t, http.StatusOK, code)
	var read streamConfig
	require.NoError(t, json.Unmarshal(data, &read))
	require.Equal(t, st, read)
	code, data = e.ssf(http.MethodGet, "/ssf/streams", tok, "")
	require.Equal(t, http.StatusOK, code)
	var list []streamConfig
	require.NoError(t, json.Unmarshal(data, &list))
	require.Equal(t, []streamConfig{st}, list)

	code, data = e.ssf(http.MethodGet, "/ssf/status?stream_id="+st.StreamID, tok, "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"stream_id":"`+st.StreamID+`","status":"enabled"}`, string(data))
	code, data = e.ssf(http.MethodPost, "/ssf/status", tok, `{"stream_id":"`+st.StreamID+`","status":"paused","reason":"deploy"}`)
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"stream_id":"`+st.StreamID+`","status":"paused","reason":"deploy"}`, string(data))

	code, _ = e.ssf(http.MethodDelete, "/ssf/streams?stream_id="+st.StreamID, tok, "")
	require.Equal(t, http.StatusNoContent, code)
	code, _ = e.ssf(http.MethodGet, "/ssf/streams?stream_id="+st.StreamID, tok, "")
	require.Equal(t, http.StatusNotFound, code)
	code, data = e.ssf(http.MethodGet, "/ssf/streams", tok, "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `[]`, string(data))
}

// TestSSFRefusesMalformedAndForeignRequests plays a receiver that gets
// things wrong, and an attacker with the wrong kind of token: each gets
// the spec's status, and nothing changes.
func TestSSFRefusesMalformedAndForeignRequests(t *testing.T) {
	e := newEnv(t, withSignalReceiver("orders", "mail"), withSignalReceiver("billing", "bank"),
		func(c *Config) { c.SSF.MaxStreams = 2 })
	tok, other := e.serviceToken("orders"), e.serviceToken("billing")
	mine := e.createStream(tok, requestRevoked)
	theirs := e.createStream(other, requestRevoked)
	person := e.browser().login(e.rp("mail"), "alice")
	push := func(url, header string) string {
		return `{"delivery":{"method":"` + session.MethodPush + `","endpoint_url":"` + url + `","authorization_header":"` + header + `"}}`
	}
	for _, tc := range []struct {
		name, method, path, token, body string
		want                            int
	}{
		{"no token", http.MethodGet, "/ssf/streams", "", "", http.StatusUnauthorized},
		{"a forged token", http.MethodGet, "/ssf/streams", "eyJhbGciOiJub25lIn0.e30.", "", http.StatusUnauthorized},
		{"a person's access token", http.MethodGet, "/ssf/streams", person.AccessToken, "", http.StatusUnauthorized},
		{"an app that is not a resource server", http.MethodGet, "/ssf/streams", e.serviceToken("mail"), "", http.StatusForbidden},
		{"body not JSON", http.MethodPost, "/ssf/streams", tok, `{"delivery":`, http.StatusBadRequest},
		{"body of the wrong shape", http.MethodPost, "/ssf/streams", tok, `{"events_requested":"all"}`, http.StatusBadRequest},
		{"unknown delivery method", http.MethodPost, "/ssf/streams", tok, `{"delivery":{"method":"urn:example:carrier-pigeon"}}`, http.StatusBadRequest},
		{"push without an endpoint", http.MethodPost, "/ssf/streams", tok, push("", ""), http.StatusBadRequest},
		{"push to plain http elsewhere than loopback", http.MethodPost, "/ssf/streams", tok, push("http://orders.example/ssf", ""), http.StatusBadRequest},
		{"push with credentials in the URL", http.MethodPost, "/ssf/streams", tok, push("https://u:p@orders.example/ssf", ""), http.StatusBadRequest},
		{"authorization header that injects a header", http.MethodPost, "/ssf/streams", tok,
			push("https://orders.example/ssf", `Bearer x\r\nX-Evil: 1`), http.StatusBadRequest},
		{"poll with the receiver's own endpoint", http.MethodPost, "/ssf/streams", tok,
			`{"delivery":{"method":"` + session.MethodPoll + `","endpoint_url":"https://orders.example/"}}`, http.StatusBadRequest},
		{"another issuer", http.MethodPost, "/ssf/streams", tok, `{"iss":"https://evil.example"}`, http.StatusBadRequest},
		{"another audience", http.MethodPost, "/ssf/streams", tok, `{"aud":"billing"}`, http.StatusBadRequest},
		{"too many event types", http.MethodPost, "/ssf/streams", tok, `{"events_requested":[` + strings.Repeat(`"urn:x",`, 32) + `"urn:y"]}`, http.StatusBadRequest},
		{"update without stream_id", http.MethodPatch, "/ssf/streams", tok, `{"description":"x"}`, http.StatusBadRequest},
		{"update of events_delivered", http.MethodPatch, "/ssf/streams", tok, `{"stream_id":"` + mine.StreamID + `","events_delivered":[]}`, http.StatusBadRequest},
		{"update of another receiver's stream", http.MethodPatch, "/ssf/streams", tok, `{"stream_id":"` + theirs.StreamID + `","description":"mine now"}`, http.StatusNotFound},
		{"read of another receiver's stream", http.MethodGet, "/ssf/streams?stream_id=" + theirs.StreamID, tok, "", http.StatusNotFound},
		{"delete without stream_id", http.MethodDelete, "/ssf/streams", tok, "", http.StatusBadRequest},
		{"delete of another receiver's stream", http.MethodDelete, "/ssf/streams?stream_id=" + theirs.StreamID, tok, "", http.StatusNotFound},
		{"unknown status", http.MethodPost, "/ssf/status", tok, `{"stream_id":"` + mine.StreamID + `","status":"on"}`, http.StatusBadRequest},
		{"status of another receiver's stream", http.MethodGet, "/ssf/status?stream_id=" + theirs.StreamID, tok, "", http.StatusNotFound},
		{"verification of another receiver's stream", http.MethodPost, "/ssf/verify", tok, `{"stream_id":"` + theirs.StreamID + `"}`, http.StatusNotFound},
		{"verification state too long", http.MethodPost, "/ssf/verify", tok, `{"stream_id":"` + mine.StreamID + `","state":"` + strings.Repeat("s", 1025) + `"}`, http.StatusBadRequest},
		{"poll of another receiver's stream", http.MethodPost, "/ssf/poll/" + theirs.StreamID, tok, `{"returnImmediately":true}`, http.StatusNotFound},
		{"poll with negative maxEvents", http.MethodPost, "/ssf/poll/" + mine.StreamID, tok, `{"maxEvents":-1}`, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, data := e.ssf(tc.method, tc.path, tc.token, tc.body)
			require.Equal(t, tc.want, code, "%s", data)
			if code >= 400 && code != http.StatusUnauthorized {
				var body map[string]string
				require.NoError(t, json.Unmarshal(data, &body), "%s", data)
				require.NotEmpty(t, body["err"])
				require.NotContains(t, body["description"], "sql")
			}
		})
	}
	t.Run("a third stream is over the bound", func(t *testing.T) {
		e.createStream(tok, `{}`)
		code, _ := e.ssf(http.MethodPost, "/ssf/streams", tok, `{}`)
		require.Equal(t, http.StatusConflict, code)
	})
	t.Run("nothing changed", func(t *testing.T) {
		code, data := e.ssf(http.MethodGet, "/ssf/streams?stream_id="+theirs.StreamID, other, "")
		require.Equal(t, http.StatusOK, code)
		var st streamConfig
		require.NoError(t, json.Unmarshal(data, &st))
		require.Equal(t, theirs, st)
	})
}

// TestSSFSessionRevokedSET: every end of an app session reaches, as a CAEP
// session-revoked SET, the streams of exactly the resource servers that
// serve that app, and stays there until acknowledged.
func TestSSFSessionRevokedSET(t *testing.T) {
	e := newEnv(t, withSignalReceiver("orders", "mail", "bank"), withSignalReceiver("billing", "bank"))
	orders, billing := e.serviceToken("orders"), e.serviceToken("billing")
	ordersStream, billingStream := e.createStream(orders, requestRevoked), e.createStream(billing, requestRevoked)
	quiet := e.createStream(orders, `{}`) // asked for nothing

	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	b.login(e.rp("spa"), "alice")
	e.clock.Advance(time.Minute)
	endedAt := e.clock.Now()
	require.NoError(t, e.p.Tracker().End(t.Context(), mail.sid, session.ReasonLogout, "user"))

	sets := e.pollSETs(orders, ordersStream.StreamID)
	require.Len(t, sets, 1, "mail ended; spa is served by nobody")
	require.Empty(t, e.pollSETs(billing, billingStream.StreamID), "billing does not serve mail")
	require.Empty(t, e.pollSETs(orders, quiet.StreamID), "a stream that did not ask for session-revoked")
	var jti string
	for k, raw := range sets {
		jti = k
		claims := e.verifySET(raw, "orders")
		require.Equal(t, jti, claims["jti"])
		require.NotEmpty(t, claims["txn"])
		user, err := e.store.UserByUsername(t.Context(), "alice")
		require.NoError(t, err)
		require.Equal(t, map[string]any{"format": "complex",
			"session":     map[string]any{"format": "opaque", "id": mail.sid},
			"user":        map[string]any{"format": "iss_sub", "iss": e.issuer, "sub": user.ID},
			"application": map[string]any{"format": "opaque", "id": "mail"},
		}, claims["sub_id"])
		require.Equal(t, map[string]any{session.EventSessionRevoked: map[string]any{
			"event_timestamp":   float64(endedAt.Unix()),
			"initiating_entity": "user",
			"reason_admin":      map[string]any{"en": "logout"},
		}}, claims["events"])
	}

	// Unacknowledged, it comes again, across a restart of the provider.
	e.restart(nil)
	again := e.pollSETs(orders, ordersStream.StreamID)
	require.Contains(t, again, jti)
	require.Empty(t, e.pollSETs(orders, ordersStream.StreamID, jti), "acknowledged: gone")
	events, err := e.store.Audit(t.Context(), sessionFilter(mail.sid))
	require.NoError(t, err)
	require.True(t, hasEvent(events, session.AuditSignalDelivered, "logout"), "the audit says the API was told")

	// Bank's end reaches both its resource servers; an idle end says policy.
	bank := b.login(e.rp("bank"), "alice")
	e.clock.Advance(10 * time.Minute)
	e.sweep()
	for _, rs := range []struct{ token, stream, aud string }{{orders, ordersStream.StreamID, "orders"}, {billing, billingStream.StreamID, "billing"}} {
		sets := e.pollSETs(rs.token, rs.stream)
		require.Len(t, sets, 1)
		for _, raw := range sets {
			claims := e.verifySET(raw, rs.aud)
			ev := claims["events"].(map[string]any)[session.EventSessionRevoked].(map[string]any)
			require.Equal(t, map[string]any{"en": "idle_timeout"}, ev["reason_admin"])
			require.Equal(t, "policy", ev["initiating_entity"])
			require.Equal(t, bank.sid, claims["sub_id"].(map[string]any)["session"].(map[string]any)["id"])
		}
	}
}

func TestSSFLongPoll(t *testing.T) {
	e := newEnv(t, withSignalReceiver("orders", "mail"), func(c *Config) { c.SSF.PollWait = time.Minute })
	tok := e.serviceToken("orders")
	st := e.createStream(tok, requestRevoked)
	mail := e.browser().login(e.rp("mail"), "alice")

	type result struct {
		code int
		sets map[string]string
	}
	done := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, e.issuer+"/ssf/poll/"+st.StreamID, strings.NewReader(`{"returnImmediately":false}`))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- result{}
			return
		}
		defer resp.Body.Close()
		var out pollResponse
		_ = json.NewDecoder(resp.Body).Decode(&out)
		done <- result{resp.StatusCode, out.Sets}
	}()
	// The poll is waiting (nothing queued); the end wakes it.
	require.Eventually(t, func() bool {
		e.p.signals.mu.Lock()
		defer e.p.signals.mu.Unlock()
		return e.p.signals.waiters == 1
	}, 5*time.Second, time.Millisecond)
	require.NoError(t, e.p.Tracker().End(t.Context(), mail.sid, session.ReasonAdmin, "admin"))
	r := <-done
	require.Equal(t, http.StatusOK, r.code)
	require.Len(t, r.sets, 1)

	t.Run("a stream holds a bounded number of long polls", func(t *testing.T) {
		for jti := range r.sets {
			require.Empty(t, e.pollSETs(tok, st.StreamID, jti), "acknowledged: the queue is empty")
		}
		mail := e.browser().login(e.rp("mail"), "alice")
		held := make(chan int, maxHeldPolls)
		for range maxHeldPolls {
			go func() {
				req, _ := http.NewRequest(http.MethodPost, e.issuer+"/ssf/poll/"+st.StreamID, strings.NewReader(`{}`))
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					held <- 0
					return
				}
				resp.Body.Close()
				held <- resp.StatusCode
			}()
		}
		require.Eventually(t, func() bool {
			e.p.signals.mu.Lock()
			defer e.p.signals.mu.Unlock()
			return e.p.signals.held[st.StreamID] == maxHeldPolls
		}, 5*time.Second, time.Millisecond)
		start := time.Now()
		code, data := e.ssf(http.MethodPost, "/ssf/poll/"+st.StreamID, tok, `{}`)
		require.Equal(t, http.StatusOK, code)
		require.JSONEq(t, `{"sets":{}}`, string(data), "one poll too many answers at once")
		require.Less(t, time.Since(start), 30*time.Second, "not held for PollWait")
		require.NoError(t, e.p.Tracker().End(t.Context(), mail.sid, session.ReasonAdmin, "admin"))
		for range maxHeldPolls {
			require.Equal(t, http.StatusOK, <-held)
		}
	})

	t.Run("an empty queue answers empty after the bound", func(t *testing.T) {
		e := newEnv(t, withSignalReceiver("orders", "mail"), func(c *Config) { c.SSF.PollWait = 20 * time.Millisecond })
		tok := e.serviceToken("orders")
		st := e.createStream(tok, requestRevoked)
		code, data := e.ssf(http.MethodPost, "/ssf/poll/"+st.StreamID, tok, `{}`)
		require.Equal(t, http.StatusOK, code)
		require.JSONEq(t, `{"sets":{}}`, string(data))
	})
}

func TestSSFPollBatchesAndAcks(t *testing.T) {
	e := newEnv(t, withSignalReceiver("orders", "mail", "bank", "refresher"))
	tok := e.serviceToken("orders")
	st := e.createStream(tok, requestRevoked)
	b := e.browser()
	var sids []string
	for _, app := range []string{"mail", "bank", "refresher"} {
		sids = append(sids, b.login(e.rp(app), "alice").sid)
	}
	require.NoError(t, e.p.Tracker().End(t.Context(), sids[0], session.ReasonLogout, "user"))

	code, data := e.ssf(http.MethodPost, "/ssf/poll/"+st.StreamID, tok, `{"maxEvents":2,"returnImmediately":true}`)
	require.Equal(t, http.StatusOK, code)
	var first pollResponse
	require.NoError(t, json.Unmarshal(data, &first))
	require.Len(t, first.Sets, 2)
	require.True(t, first.MoreAvailable)

	var acks []string
	setErrs := map[string]pollSetErr{}
	for jti := range first.Sets {
		if len(acks) == 0 {
			acks = append(acks, jti)
		} else {
			setErrs[jti] = pollSetErr{Err: "invalid_key", Description: "unknown kid"}
		}
	}
	body, _ := json.Marshal(map[string]any{"ack": acks, "setErrs": setErrs, "maxEvents": 10, "returnImmediately": true})
	code, data = e.ssf(http.MethodPost, "/ssf/poll/"+st.StreamID, tok, string(body))
	require.Equal(t, http.StatusOK, code)
	var second pollResponse
	require.NoError(t, json.Unmarshal(data, &second))
	require.Len(t, second.Sets, 1, "acknowledged and errored SETs are not sent again")
	require.False(t, second.MoreAvailable)
	for jti := range second.Sets {
		require.NotContains(t, first.Sets, jti)
	}

	code, data = e.ssf(http.MethodPost, "/ssf/poll/"+st.StreamID, tok, `{"maxEvents":0}`)
	require.Equal(t, http.StatusOK, code, "maxEvents 0 acknowledges only")
	require.JSONEq(t, `{"sets":{}}`, string(data))
}

// pushReceiver is an RFC 8935 endpoint that fails its first answers.
type pushReceiver struct {
	mu       sync.Mutex
	failures int
	got      []*http.Request
	bodies   []string
	srv      *httptest.Server
}

func newPushReceiver(t *testing.T, failures int) *pushReceiver {
	r := &pushReceiver{failures: failures}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.got = append(r.got, req)
		r.bodies = append(r.bodies, string(body))
		if r.failures > 0 {
			r.failures--
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func TestSSFPushRetriedUntilAccepted(t *testing.T) {
	e := newEnv(t, withSignalReceiver("orders", "mail"))
	tok := e.serviceToken("orders")
	rcv := newPushReceiver(t, 2)
	e.createStream(tok, `{"delivery":{"method":"`+session.MethodPush+`","endpoint_url":"`+rcv.srv.URL+`/ssf","authorization_header":"Bearer rcv-secret"},
		"events_requested":["`+session.EventSessionRevoked+`"]}`)
	mail := e.browser().login(e.rp("mail"), "alice")
	require.NoError(t, e.p.Tracker().End(t.Context(), mail.sid, session.ReasonLogout, "user"))

	require.Equal(t, 1, e.deliver())
	require.Zero(t, e.deliver(), "not due again before its backoff")
	for range 2 {
		e.clock.Advance(time.Minute)
		require.Equal(t, 1, e.deliver())
	}
	e.clock.Advance(time.Hour)
	require.Zero(t, e.deliver(), "accepted: nothing left")

	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	require.Len(t, rcv.got, 3)
	for i, req := range rcv.got {
		require.Equal(t, "application/secevent+jwt", req.Header.Get("Content-Type"))
		require.Equal(t, "application/json", req.Header.Get("Accept"))
		require.Equal(t, "Bearer rcv-secret", req.Header.Get("Authorization"))
		require.Equal(t, "/ssf", req.URL.Path)
		if i > 0 {
			require.Equal(t, e.verifySETAt(rcv.bodies[0])["jti"], e.verifySETAt(rcv.bodies[i])["jti"], "the same jti on every attempt")
		}
	}
	events, err := e.store.Audit(t.Context(), sessionFilter(mail.sid))
	require.NoError(t, err)
	require.True(t, hasEvent(events, session.AuditSignalRetrying, "logout"))
	require.True(t, hasEvent(events, session.AuditSignalDelivered, "logout"))
}

// verifySETAt parses a SET's claims without the iat check (it was signed
// at an earlier time of the test clock).
func (e *env) verifySETAt(raw string) map[string]any {
	e.t.Helper()
	parts := strings.Split(raw, ".")
	require.Len(e.t, parts, 3)
	return decodeSegment(e.t, parts[1])
}

func TestSSFVerificationEvent(t *testing.T) {
	e := newEnv(t, withSignalReceiver("orders", "mail"))
	tok := e.serviceToken("orders")
	st := e.createStream(tok, `{}`)
	code, data := e.ssf(http.MethodPost, "/ssf/verify", tok, `{"stream_id":"`+st.StreamID+`","state":"VGhpcyBpcyBhIHN0YXRl"}`)
	require.Equal(t, http.StatusNoContent, code, "%s", data)
	code, _ = e.ssf(http.MethodPost, "/ssf/verify", tok, `{"stream_id":"`+st.StreamID+`"}`)
	require.Equal(t, http.StatusTooManyRequests, code, "within min_verification_interval")

	sets := e.pollSETs(tok, st.StreamID)
	require.Len(t, sets, 1, "verification is sent even though not requested (SSF 1.0 section 8.1.4)")
	for _, raw := range sets {
		claims := e.verifySET(raw, "orders")
		require.Equal(t, map[string]any{"format": "opaque", "id": st.StreamID}, claims["sub_id"])
		require.Equal(t, map[string]any{session.EventVerification: map[string]any{"state": "VGhpcyBpcyBhIHN0YXRl"}}, claims["events"])
	}
	e.clock.Advance(10 * time.Second)
	code, _ = e.ssf(http.MethodPost, "/ssf/verify", tok, `{"stream_id":"`+st.StreamID+`"}`)
	require.Equal(t, http.StatusNoContent, code, "after the interval")
}

// TestSSFPausedHoldsDisabledDrops: a paused stream sends nothing and keeps
// its events; a disabled one keeps nothing (SSF 1.0 section 8.1.2).
func TestSSFPausedHoldsDisabledDrops(t *testing.T) {
	e := newEnv(t, withSignalReceiver("orders", "mail", "bank"))
	tok := e.serviceToken("orders")
	st := e.createStream(tok, requestRevoked)
	setStatus := func(status string) {
		code, data := e.ssf(http.MethodPost, "/ssf/status", tok, `{"stream_id":"`+st.StreamID+`","status":"`+status+`"}`)
		require.Equal(t, http.StatusOK, code, "%s", data)
	}
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	setStatus(streamPaused)
	require.NoError(t, e.p.Tracker().EndApp(t.Context(), mail.sid+"."+appSuffix(t, e, mail.sid, "mail"), session.ReasonAdmin, "admin"))
	require.Empty(t, e.pollSETs(tok, st.StreamID), "paused: nothing sent")
	setStatus(streamEnabled)
	require.Len(t, e.pollSETs(tok, st.StreamID), 1, "enabled: the held event is sent")
	setStatus(streamDisabled)
	require.NoError(t, e.p.Tracker().End(t.Context(), mail.sid, session.ReasonAdmin, "admin"))
	setStatus(streamEnabled)
	require.Empty(t, e.pollSETs(tok, st.StreamID), "a disabled stream kept nothing")
}

// appSuffix returns the suffix of the live application session of client
// in sid.
func appSuffix(t *testing.T, e *env, sid, client string) string {
	t.Helper()
	_, apps, err := e.store.AuthSession(t.Context(), sid)
	require.NoError(t, err)
	for _, a := range apps {
		if a.ClientID == client && a.Live() {
			_, suffix, _ := strings.Cut(a.ID, ".")
			return suffix
		}
	}
	t.Fatalf("no live %s session in %s", client, sid)
	return ""
}

// TestSSFAcrossReplicas: streams, queues and the verification interval
// live in the database, so any replica serves any receiver; a long poll
// held at one replica gets an end committed at another (found within
// SSF.WatchInterval by the newest event id).
func TestSSFAcrossReplicas(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) { ssfAcrossReplicas(t, db) })
}

func ssfAcrossReplicas(t *testing.T, db backend) {
	c := newCluster(t, db, 2, withSignalReceiver("orders", "mail"))
	c.replicas[1].p.Run(t.Context())
	t.Cleanup(func() { require.NoError(t, c.replicas[1].p.Close(context.Background())) })
	tok := c.via(0).serviceToken("orders")
	st := c.createStream(tok, requestRevoked)
	mail := c.browser().login(c.rp("mail"), "alice")

	done := make(chan map[string]string, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, c.issuer+"/ssf/poll/"+st.StreamID, strings.NewReader(`{}`))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := c.pinned(1).Do(req)
		if err != nil {
			done <- nil
			return
		}
		defer resp.Body.Close()
		var out pollResponse
		_ = json.NewDecoder(resp.Body).Decode(&out)
		done <- out.Sets
	}()
	hub := c.replicas[1].p.signals
	require.Eventually(t, func() bool {
		hub.mu.Lock()
		defer hub.mu.Unlock()
		return hub.waiters == 1
	}, 5*time.Second, time.Millisecond)
	require.NoError(t, c.replicas[0].p.Tracker().End(t.Context(), mail.sid, session.ReasonLogout, "user"))
	sets := <-done
	require.Len(t, sets, 1, "the end at replica 0 reached the poll held at replica 1")

	code, _ := c.via(1).ssf(http.MethodPost, "/ssf/verify", tok, `{"stream_id":"`+st.StreamID+`"}`)
	require.Equal(t, http.StatusNoContent, code)
	code, _ = c.via(0).ssf(http.MethodPost, "/ssf/verify", tok, `{"stream_id":"`+st.StreamID+`"}`)
	require.Equal(t, http.StatusTooManyRequests, code, "the interval holds across replicas")
}
