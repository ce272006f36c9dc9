package oidc

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"

	"github.com/idleguard/idleguard/session"
)

// The tests in this file pin the rules of docs/idle-model.md, each
// through the real endpoints, with the provider's clock frozen and advanced.

func active(t *testing.T, e *env, accessToken string) bool {
	t.Helper()
	return e.introspect(accessToken)["active"] == true
}

// statusActive reads GET /session, which is never activity.
func statusActive(t *testing.T, e *env, accessToken string) bool {
	t.Helper()
	return e.status(accessToken)["active"] == true
}

func TestStrictestAppWins(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice") // 30m
	bank := b.login(e.rp("bank"), "alice") // 5m

	st := e.status(mail.AccessToken)
	require.EqualValues(t, 300, st["idle_timeout"], "joining the 5m app tightened the whole session")

	// The person works only in the 30m app; every minute of it keeps both alive.
	for range 4 {
		e.clock.Advance(4 * time.Minute)
		require.Equal(t, http.StatusOK, e.heartbeat(mail.fresh(e)))
	}
	require.True(t, statusActive(t, e, bank.fresh(e)), "activity in any app refreshes the shared timer")

	// Then they walk away: the session ends after 5 minutes, not 30.
	e.clock.Advance(5*time.Minute - time.Second)
	require.True(t, statusActive(t, e, mail.AccessToken))
	e.clock.Advance(time.Second)
	require.False(t, statusActive(t, e, mail.AccessToken))
	require.False(t, statusActive(t, e, bank.AccessToken))
}

func TestExemptAppDoesNotPullTheLimitDown(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")   // 30m
	video := b.login(e.rp("video"), "alice") // exempt, 2h of its own

	require.EqualValues(t, 1800, e.status(mail.AccessToken)["idle_timeout"])
	e.clock.Advance(29 * time.Minute)
	require.True(t, statusActive(t, e, mail.AccessToken))
	e.clock.Advance(time.Minute)
	require.False(t, statusActive(t, e, mail.AccessToken))

	// The exempt app's session survives the idle end of the authentication session.
	require.Equal(t, 2, e.sweep(), "the sweep ends the auth session and mail's, not video's")
	require.True(t, active(t, e, video.AccessToken))
	st := e.status(video.AccessToken)
	require.EqualValues(t, 7200, st["idle_timeout"], "an exempt app reports its own limit")

	// Its token is for the video app alone.
	got := e.introspect(video.AccessToken)
	require.Equal(t, []any{"video"}, got["aud"])

	// It cannot be used to sign in to another app: the browser sees a login page.
	resp, _, _ := b.authorize(e.rp("bank"))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body(t, resp), "You were signed out after 30 minutes of inactivity.")

	// Its refresh still works, until its own idle timeout.
	fresh, err := e.rp("video").refresh(t, video.RefreshToken)
	require.NoError(t, err)
	require.True(t, active(t, e, fresh.AccessToken))
	e.clock.Advance(2 * time.Hour)
	require.False(t, active(t, e, fresh.AccessToken))
	_, err = e.rp("video").refresh(t, fresh.RefreshToken)
	requireOAuthError(t, err, "invalid_grant")
	require.Equal(t, 1, e.sweep())
	_, apps, err := e.store.AuthSession(t.Context(), video.sid)
	require.NoError(t, err)
	for _, a := range apps {
		require.False(t, a.Live(), a.ClientID)
	}
}

func TestExemptStrictAppDoesNotShortenSession(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		for _, cl := range c.Clients {
			if cl.ID == "bank" {
				cl.Policy.Exempt = true
			}
		}
	})
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	b.login(e.rp("bank"), "alice") // 5m, but exempt
	e.clock.Advance(6 * time.Minute)
	require.True(t, statusActive(t, e, mail.AccessToken), "an exempt 5m app does not end the session at 5m")
	e.clock.Advance(24 * time.Minute)
	require.False(t, statusActive(t, e, mail.fresh(e)))
}

// Issue 9, finding 13: an exempt app's traffic refreshes its own timer only.
// A video that keeps sending heartbeats, introspections and SSO requests must
// not keep a 4-second-idle session alive for the apps next to it.
func TestExemptAppActivityDoesNotMoveTheSharedTimer(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Session.IdleTimeout = 4 * time.Second })
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	video := b.login(e.rp("video"), "alice") // exempt, 2h of its own

	for range 4 { // 8 seconds of video traffic, nothing else
		e.clock.Advance(2 * time.Second)
		require.Equal(t, http.StatusOK, e.heartbeat(video.AccessToken))
		require.True(t, active(t, e, video.AccessToken))
		resp, _, _ := b.authorize(e.rp("video")) // SSO into the video app again
		resp.Body.Close()
	}
	st, err := e.p.tracker.Session(t.Context(), mail.sid)
	require.NoError(t, err)
	require.False(t, st.Active, "the shared timer ran out at 4s whatever the video did")
	_, err = e.rp("mail").refresh(t, mail.RefreshToken)
	requireOAuthError(t, err, "invalid_grant")
	resp, _, _ := b.authorize(e.rp("bank"))
	require.Contains(t, body(t, resp), "You were signed out after 4 seconds of inactivity.")
	require.True(t, statusActive(t, e, video.AccessToken), "the video keeps itself alive")
	require.Equal(t, 2, e.sweep(), "the idle end takes the session and mail, not the video")
	events, err := e.store.Audit(t.Context(), sessionFilter(mail.sid))
	require.NoError(t, err)
	require.True(t, hasEvent(events, session.AuditSessionEnd, string(session.ReasonIdleTimeout)))
}

func TestActivitySources(t *testing.T) {
	for _, tc := range []struct {
		name    string
		client  string
		act     func(e *env, tok, other *tokens)
		extends bool
	}{
		{"heartbeat", "mail", func(e *env, tok, other *tokens) { require.Equal(e.t, 200, e.heartbeat(tok.AccessToken)) }, true},
		{"introspection", "mail", func(e *env, tok, other *tokens) { require.True(e.t, active(e.t, e, tok.AccessToken)) }, true},
		{"userinfo", "mail", func(e *env, tok, other *tokens) {
			code, _ := e.userinfo(tok.AccessToken)
			require.Equal(e.t, 200, code)
		}, true},
		{"sso", "mail", func(e *env, tok, other *tokens) {
			resp, _, _ := e.browsers[0].authorize(e.rp("opaque")) // another 30m app
			require.Equal(e.t, http.StatusFound, resp.StatusCode)
		}, true},
		{"refresh is off by default", "mail", func(e *env, tok, other *tokens) {
			_, err := e.rp("mail").refresh(e.t, tok.RefreshToken)
			require.NoError(e.t, err)
		}, false},
		{"refresh where the app opts in", "refresher", func(e *env, tok, other *tokens) {
			_, err := e.rp("refresher").refresh(e.t, tok.RefreshToken)
			require.NoError(e.t, err)
		}, true},
		{"session status is never activity", "mail", func(e *env, tok, other *tokens) { require.True(e.t, statusActive(e.t, e, tok.AccessToken)) }, false},
		{"revocation is never activity", "mail", func(e *env, tok, other *tokens) {
			revoke(e.t, e, tok.client, other.AccessToken, "access_token")
		}, false},
		{"discovery and jwks are never activity", "mail", func(e *env, tok, other *tokens) {
			for _, path := range []string{"/.well-known/openid-configuration", "/keys"} {
				resp, err := http.Get(e.issuer + path)
				require.NoError(e.t, err)
				resp.Body.Close()
			}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			b := e.browser()
			e.browsers = append(e.browsers, b)
			tok := b.login(e.rp(tc.client), "alice")
			other := b.login(e.rp(tc.client), "alice")
			before := e.status(tok.AccessToken)
			e.clock.Advance(10 * time.Minute)
			tc.act(e, tok, other)
			after := e.status(tok.AccessToken)
			if tc.extends {
				require.Equal(t, before["idle_remaining"], after["idle_remaining"], "the timer restarted at the activity")
			} else {
				require.Equal(t, before["idle_remaining"].(float64)-600, after["idle_remaining"], "the timer kept running")
			}
		})
	}
}

func TestDisabledSourceDoesNotCount(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		for _, cl := range c.Clients {
			if cl.ID == "mail" {
				cl.Policy.Sources = 1 // login only
			}
		}
	})
	tok := e.browser().login(e.rp("mail"), "alice")
	e.clock.Advance(10 * time.Minute)
	require.Equal(t, 200, e.heartbeat(tok.AccessToken))
	require.True(t, active(t, e, tok.AccessToken))
	require.EqualValues(t, 20*60, e.status(tok.AccessToken)["idle_remaining"], "30m limit, 10m without counted activity")
}

func TestPollingSessionStatusNeverKeepsASessionAlive(t *testing.T) {
	e := newEnv(t)
	tok := e.browser().login(e.rp("bank"), "alice") // 5m
	for i := range 7 {
		st := e.status(tok.AccessToken)
		require.Equal(t, i < 5, st["active"], "minute %d: %v", i, st)
		e.clock.Advance(time.Minute)
	}
	require.Equal(t, "idle_timeout", e.status(tok.AccessToken)["reason"])
}

func TestLastInteractionIsClamped(t *testing.T) {
	e := newEnv(t)
	tok := e.browser().login(e.rp("bank"), "alice") // 5m
	e.clock.Advance(2 * time.Minute)

	post := func(v string) map[string]any {
		code, out := e.bearerCall(http.MethodPost, "/activity", tok.AccessToken, `{"last_interaction":`+v+`}`)
		require.Equal(t, http.StatusOK, code, "%v", out)
		return out
	}
	// A time in the future is clamped to now: the client cannot move time forward.
	st := post(fmt.Sprint(e.clock.Now().Add(time.Hour).Unix()))
	require.EqualValues(t, 300, st["idle_remaining"])
	// One minute ago counts as one minute ago.
	e.clock.Advance(2 * time.Minute)
	st = post(fmt.Sprint(e.clock.Now().Add(-time.Minute).Unix()))
	require.EqualValues(t, 240, st["idle_remaining"])
	// Before the previous activity is clamped to it: no moving time backward.
	st = post(`"` + e.clock.Now().Add(-time.Hour).Format(time.RFC3339) + `"`)
	require.EqualValues(t, 240, st["idle_remaining"])

	code, out := e.bearerCall(http.MethodPost, "/activity", tok.AccessToken, `{"last_interaction":"yesterday"}`)
	require.Equal(t, http.StatusBadRequest, code)
	require.Equal(t, "invalid_request", out["error"])
}

func TestActivityAfterTheDeadlineNeverRevives(t *testing.T) {
	e := newEnv(t)
	tok := e.browser().login(e.rp("bank"), "alice")
	e.clock.Advance(5 * time.Minute)
	require.Equal(t, http.StatusUnauthorized, e.heartbeat(tok.AccessToken))
	// Not even with a last_interaction from before the deadline.
	code, _ := e.bearerCall(http.MethodPost, "/activity", tok.AccessToken,
		fmt.Sprintf(`{"last_interaction":%d}`, e.clock.Now().Add(-time.Minute).Unix()))
	require.Equal(t, http.StatusUnauthorized, code)
	require.False(t, active(t, e, tok.AccessToken))
	require.False(t, statusActive(t, e, tok.AccessToken))
}

func TestEveryCredentialStopsAtTheDeadlineBeforeAnySweep(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	tok := b.login(e.rp("bank"), "alice")
	e.clock.Advance(5 * time.Minute) // no sweep has run

	_, err := e.rp("bank").refresh(t, tok.RefreshToken)
	requireOAuthError(t, err, "invalid_grant")
	require.False(t, active(t, e, tok.AccessToken))
	code, _ := e.userinfo(tok.AccessToken)
	require.Equal(t, http.StatusUnauthorized, code)
	require.Equal(t, http.StatusUnauthorized, e.heartbeat(tok.AccessToken))

	resp, _, _ := b.authorize(e.rp("mail"))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body(t, resp), "You were signed out after 5 minutes of inactivity.")

	// prompt=none gets login_required, not a page.
	resp, _, state := b.authorize(e.rp("mail"), oauth2.SetAuthURLParam("prompt", "none"))
	require.Equal(t, http.StatusFound, resp.StatusCode)
	require.Contains(t, resp.Header.Get("Location"), "error=login_required")
	require.Contains(t, resp.Header.Get("Location"), "state="+state)
}

func TestAccessTokenLivesNoLongerThanTheIdleLimit(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.login(e.rp("mail"), "alice")
	bank := b.login(e.rp("bank"), "alice") // ttl 10m, limit 5m
	exp := e.introspect(bank.AccessToken)["exp"].(float64)
	require.Equal(t, float64(e.clock.Now().Add(5*time.Minute).Unix()), exp)
	mail := b.login(e.rp("mail"), "alice") // the session's limit is now 5m for mail too
	require.Equal(t, float64(e.clock.Now().Add(5*time.Minute).Unix()), e.introspect(mail.AccessToken)["exp"])
	video := b.login(e.rp("video"), "alice") // exempt: its own 2h limit, ttl 1h
	require.Equal(t, float64(e.clock.Now().Add(time.Hour).Unix()), e.introspect(video.AccessToken)["exp"])
}

func TestAppIdleTimeoutEndsThatAppAlone(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")     // 30m
	lonely := b.login(e.rp("lonely"), "alice") // 30m, app_idle_timeout 3m
	for range 2 {
		e.clock.Advance(2 * time.Minute)
		require.Equal(t, 200, e.heartbeat(mail.AccessToken))
	}
	require.False(t, active(t, e, lonely.AccessToken), "unused for 4m > 3m: that app alone is over")
	require.True(t, active(t, e, mail.AccessToken))
	require.Equal(t, 1, e.sweep())
	_, apps, err := e.store.AuthSession(t.Context(), mail.sid)
	require.NoError(t, err)
	for _, a := range apps {
		if a.ClientID == "lonely" {
			require.Equal(t, session.ReasonAppIdleTimeout, a.EndReason)
		} else {
			require.True(t, a.Live())
		}
	}
	a, _, err := e.store.AuthSession(t.Context(), mail.sid)
	require.NoError(t, err)
	require.True(t, a.Live())
}

func TestAppEndRelaxesTheLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		for _, cl := range c.Clients {
			if cl.ID == "bank" {
				cl.Policy.AppIdleTimeout = 2 * time.Minute
			}
		}
	})
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	b.login(e.rp("bank"), "alice")
	require.EqualValues(t, 300, e.status(mail.AccessToken)["idle_timeout"])
	e.clock.Advance(time.Minute)
	require.Equal(t, 200, e.heartbeat(mail.AccessToken))
	e.clock.Advance(90 * time.Second)
	require.Equal(t, 1, e.sweep(), "bank ends by its app_idle_timeout")
	require.EqualValues(t, 1800, e.status(mail.AccessToken)["idle_timeout"], "recomputed without the bank app")
	e.clock.Advance(10 * time.Minute)
	require.True(t, statusActive(t, e, mail.AccessToken))
}

func TestMaxLifetimeCapsEverything(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Session.MaxLifetime = 20 * time.Minute })
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	video := b.login(e.rp("video"), "alice")
	for range 4 {
		e.clock.Advance(5 * time.Minute)
		e.heartbeat(mail.AccessToken) // the person stays busy; only the absolute limit ends it
	}
	require.False(t, active(t, e, mail.AccessToken))
	require.False(t, active(t, e, video.AccessToken), "the absolute deadline ends exempt apps too")
	require.Equal(t, 3, e.sweep())
	a, _, err := e.store.AuthSession(t.Context(), mail.sid)
	require.NoError(t, err)
	require.Equal(t, session.ReasonMaxLifetime, a.EndReason)
}

func TestSessionStatusReportsSecondsByTheProvidersClock(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Session.MaxLifetime = 2 * time.Hour })
	tok := e.browser().login(e.rp("mail"), "alice")
	e.clock.Advance(10 * time.Minute)
	st := e.status(tok.AccessToken)
	require.Equal(t, true, st["active"])
	require.Equal(t, tok.sid, st["sid"])
	require.EqualValues(t, 1800, st["idle_timeout"])
	require.EqualValues(t, 1200, st["idle_remaining"])
	require.EqualValues(t, 1200, st["expires_in"])
	require.EqualValues(t, 110*60, st["max_expires_in"])
}

func TestRestartKeepsEveryDeadline(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	b.login(e.rp("bank"), "alice")
	e.clock.Advance(3 * time.Minute)
	require.Equal(t, 200, e.heartbeat(mail.AccessToken)) // unflushed in memory
	before := e.status(mail.AccessToken)

	e.restart(nil)
	require.Equal(t, before, e.status(mail.AccessToken), "a graceful restart loses no activity")
	require.True(t, active(t, e, mail.AccessToken), "the signing keys were reused: old tokens verify")
	e.clock.Advance(5 * time.Minute)
	require.False(t, statusActive(t, e, mail.AccessToken))
}

func TestSweeperEndsWithReasonRevokesAndAudits(t *testing.T) {
	e := newEnv(t)
	tok := e.browser().login(e.rp("bank"), "alice")
	require.Zero(t, e.sweep())
	e.clock.Advance(5 * time.Minute)
	require.Equal(t, 2, e.sweep(), "the auth session and its app session")
	require.Zero(t, e.sweep())
	a, apps, err := e.store.AuthSession(t.Context(), tok.sid)
	require.NoError(t, err)
	require.Equal(t, session.ReasonIdleTimeout, a.EndReason)
	require.Equal(t, "system", a.EndedBy)
	require.Equal(t, session.ReasonIdleTimeout, apps[0].EndReason)
	events, err := e.store.Audit(t.Context(), sessionFilter(tok.sid))
	require.NoError(t, err)
	require.True(t, hasEvent(events, session.AuditSessionStart, ""))
	require.True(t, hasEvent(events, session.AuditAppJoin, ""))
	require.True(t, hasEvent(events, session.AuditSessionEnd, "idle_timeout"))
}

func TestInteractionAgeIsRelativeToTheProvidersClock(t *testing.T) {
	e := newEnv(t)
	tok := e.browser().login(e.rp("bank"), "alice") // 5m
	e.clock.Advance(3 * time.Minute)
	code, st := e.bearerCall(http.MethodPost, "/activity", tok.AccessToken, `{"interaction_age": 60}`)
	require.Equal(t, http.StatusOK, code)
	require.EqualValues(t, 240, st["idle_remaining"], "the interaction was a minute ago by the provider's clock")
	code, st = e.bearerCall(http.MethodPost, "/activity", tok.AccessToken, `{"interaction_age": 3600}`)
	require.Equal(t, http.StatusOK, code)
	require.EqualValues(t, 240, st["idle_remaining"], "clamped to the previous activity")
	code, _ = e.bearerCall(http.MethodPost, "/activity", tok.AccessToken, `{"interaction_age": -5}`)
	require.Equal(t, http.StatusBadRequest, code)
}
