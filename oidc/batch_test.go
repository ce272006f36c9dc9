package oidc

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/require"
)

// withResourceServer makes client id a resource server serving apps
// (none: its own id).
func withResourceServer(id string, apps ...string) envOption {
	return func(c *Config) {
		for _, cl := range c.Clients {
			if cl.ID == id {
				cl.ResourceServer, cl.Serves = true, apps
			}
		}
	}
}

// batch posts events to /activity/batch as client (secret "<id>-secret";
// no client: no authentication) and returns the status and the results.
func (e *env) batch(client string, body any) (int, []batchResult) {
	e.t.Helper()
	raw, ok := body.(string)
	if !ok {
		data, err := json.Marshal(body)
		require.NoError(e.t, err)
		raw = string(data)
	}
	req, err := http.NewRequest(http.MethodPost, e.issuer+"/activity/batch", strings.NewReader(raw))
	require.NoError(e.t, err)
	req.Header.Set("Content-Type", "application/json")
	if client != "" {
		req.SetBasicAuth(client, client+"-secret")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	require.Equal(e.t, "no-store", resp.Header.Get("Cache-Control"))
	var out struct{ Results []batchResult }
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out.Results
}

// jtiEvent is the event an API that keeps only a JWT's claims sends.
func jtiEvent(t *testing.T, tk *tokens, at any) map[string]any {
	t.Helper()
	tok, err := jwt.ParseSigned(tk.AccessToken, []jose.SignatureAlgorithm{jose.RS256})
	require.NoError(t, err)
	var c struct {
		JTI      string `json:"jti"`
		SID      string `json:"sid"`
		ClientID string `json:"client_id"`
	}
	require.NoError(t, tok.UnsafeClaimsWithoutVerification(&c))
	ev := map[string]any{"jti": c.JTI, "sid": c.SID, "client_id": c.ClientID}
	if at != nil {
		ev["at"] = at
	}
	return ev
}

func events(evs ...any) map[string]any { return map[string]any{"events": evs} }

// TestActivityBatchKeepsSessionsAliveEventByEvent: an API that validates
// JWTs itself reports its calls; each event counts as api activity for the
// app it names, is answered on its own and in order, and a bad event spoils
// nothing else.
func TestActivityBatchKeepsSessionsAliveEventByEvent(t *testing.T) {
	e := newEnv(t, withResourceServer("api", "mail", "opaque"))
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	opaque := b.login(e.rp("opaque"), "alice")
	bank := b.login(e.rp("bank"), "alice") // not served by api

	e.clock.Advance(4 * time.Minute)
	status, res := e.batch("api", events(
		map[string]any{"token": mail.AccessToken},
		jtiEvent(t, mail, e.clock.Now().Unix()+3600), // a future time is clamped to now
		map[string]any{"token": opaque.AccessToken, "at": e.clock.Now().Add(-time.Minute).Format(time.RFC3339)},
		map[string]any{"token": bank.AccessToken},
		jtiEvent(t, bank, nil),
		map[string]any{"token": "not-a-token"},
		42,
		map[string]any{},
		map[string]any{"token": mail.AccessToken, "jti": "x"},
		map[string]any{"token": mail.AccessToken, "at": "yesterday"},
		map[string]any{"jti": jtiEvent(t, mail, nil)["jti"], "sid": "another-sid", "client_id": "mail"},
		map[string]any{"jti": jtiEvent(t, mail, nil)["jti"], "sid": mail.sid, "client_id": "opaque"},
		json.RawMessage(`{"token":"\u0065`+mail.AccessToken[1:]+`"}`), // a JSON escape is the same token
	))
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, []batchResult{{Live: true}, {Live: true}, {Live: true},
		{Reason: "foreign"}, {Reason: "foreign"}, {Reason: "invalid_token"},
		{Reason: "malformed"}, {Reason: "malformed"}, {Reason: "malformed"}, {Reason: "malformed"}, {Reason: "malformed"},
		{Reason: "foreign"}, {Live: true}}, res)
	require.EqualValues(t, 4, e.p.tracker.Stats().Activity["api"], "only the four live events count")

	// bank's 5-minute limit is the session's: the events of t+4m keep it
	// alive at t+8m; had the future time counted, it would live until t+64m.
	e.clock.Advance(4 * time.Minute)
	st := e.status(mail.fresh(e))
	require.Equal(t, true, st["active"])
	require.EqualValues(t, 60, st["idle_remaining"])

	e.clock.Advance(time.Minute)
	status, res = e.batch("api", events(map[string]any{"token": mail.AccessToken}, jtiEvent(t, mail, nil), jtiEvent(t, bank, nil)))
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, []batchResult{{Reason: "idle_timeout"}, {Reason: "idle_timeout"}, {Reason: "foreign"}}, res,
		"activity after the deadline revives nothing; a resource server learns nothing of the apps it does not serve")
}

// TestActivityBatchRefusesBadCalls: the whole call fails without client
// authentication of a resource server, or with a body that is not a batch.
func TestActivityBatchRefusesBadCalls(t *testing.T) {
	e := newEnv(t, withResourceServer("api"))
	tk := e.browser().login(e.rp("api"), "alice") // api serves its own id: its own tokens
	one := events(map[string]any{"token": tk.AccessToken})

	status, _ := e.batch("", one)
	require.Equal(t, http.StatusUnauthorized, status)
	status, _ = e.batch("mail", one) // a client, but no resource server
	require.Equal(t, http.StatusForbidden, status)
	req, _ := http.NewRequest(http.MethodPost, e.issuer+"/activity/batch", strings.NewReader(`{"events":[]}`))
	req.SetBasicAuth("api", "wrong-secret")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.Equal(t, `Basic realm="idleguard"`, resp.Header.Get("WWW-Authenticate"))

	tooMany := make([]any, maxBatchEvents+1)
	for i := range tooMany {
		tooMany[i] = map[string]any{"token": tk.AccessToken}
	}
	for name, body := range map[string]any{
		"not JSON":      "events=1",
		"no events":     `{"evnts":[]}`,
		"events null":   `{"events":null}`,
		"not a list":    `{"events":{"token":"x"}}`,
		"1001 events":   events(tooMany...),
		"over 4 MB":     fmt.Sprintf(`{"events":[{"token":%q}]}`, strings.Repeat("a", maxBatchBody)),
		"trailing junk": `{"events":[]} {`,
	} {
		status, _ := e.batch("api", body)
		require.Equal(t, http.StatusBadRequest, status, name)
	}
	require.Zero(t, e.p.tracker.Stats().Activity["api"])

	status, res := e.batch("api", events(tooMany[:maxBatchEvents]...))
	require.Equal(t, http.StatusOK, status)
	require.Len(t, res, maxBatchEvents)
	require.Equal(t, batchResult{Live: true}, res[maxBatchEvents-1])

	status, res = e.batch("api", `{"events":[]}`)
	require.Equal(t, http.StatusOK, status)
	require.Empty(t, res)

	resp, err = http.Get(e.issuer + "/activity/batch")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
}
