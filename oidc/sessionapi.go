package oidc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/idleguard/idleguard/activity"
)

var zeroTime time.Time

// sessionStatus is the JSON of GET /session and POST /activity. Every number
// is whole seconds by the provider's clock, so the browser never compares
// its own clock with the provider's.
type sessionStatus struct {
	Active       bool   `json:"active"`
	SID          string `json:"sid,omitempty"`
	IdleTimeout  int64  `json:"idle_timeout,omitempty"`
	IdleRemain   *int64 `json:"idle_remaining,omitempty"`
	ExpiresIn    *int64 `json:"expires_in,omitempty"`
	MaxExpiresIn *int64 `json:"max_expires_in,omitempty"`
	Reason       string `json:"reason,omitempty"`
}

func seconds(d time.Duration) *int64 {
	s := int64(math.Max(0, math.Floor(d.Seconds())))
	return &s
}

func toStatus(st activity.Status) sessionStatus {
	if !st.Active {
		return sessionStatus{Active: false, Reason: string(st.EndReason)}
	}
	return sessionStatus{
		Active: true, SID: st.SID, IdleTimeout: int64(st.IdleLimit / time.Second),
		IdleRemain:   seconds(st.IdleDeadline.Sub(st.Now)),
		ExpiresIn:    seconds(st.Deadline.Sub(st.Now)),
		MaxExpiresIn: seconds(st.AbsoluteDeadline.Sub(st.Now)),
	}
}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	noStore(w)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// bearerRealm names the protection space in every bearer challenge.
const bearerRealm = `Bearer realm="idleguard"`

// writeBearerError answers 401 invalid_token (RFC 6750 section 3.1) for a
// token that is bad, expired, revoked or whose session is over. When the
// token is refused because its session is over (an
// *activity.SessionOverError), the answer says why, so that a page can tell
// the person.
func writeBearerError(w http.ResponseWriter, err error) {
	desc := err.Error()
	body := map[string]any{"active": false}
	if reason := activity.EndReasonOf(err); reason != "" {
		body["reason"] = reason
	}
	writeChallenge(w, http.StatusUnauthorized, "invalid_token", desc, body)
}

// writeNoToken answers a request that carried no bearer token (or one by a
// scheme other than Bearer): 401 with the bare challenge, which RFC 6750
// section 3.1 wants without an error code; the body says invalid_request.
func writeNoToken(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", bearerRealm)
	writeJSON(w, http.StatusUnauthorized, oauthError{Error: "invalid_request", Description: "access token missing"})
}

// writeChallenge answers a refused bearer request with status, an RFC 6750
// challenge carrying code and desc, and a JSON body with the same plus
// extra fields.
func writeChallenge(w http.ResponseWriter, status int, code, desc string, extra map[string]any) {
	w.Header().Set("WWW-Authenticate", fmt.Sprintf(`%s, error="%s", error_description="%s"`,
		bearerRealm, challengeText(code), challengeText(desc)))
	body := map[string]any{"error": code, "error_description": desc}
	for k, v := range extra {
		body[k] = v
	}
	writeJSON(w, status, body)
}

// challengeText keeps the characters that RFC 6750 section 3 allows in a
// challenge's quoted values: printable ASCII but the double quote and the
// backslash.
func challengeText(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return -1
		}
		return r
	}, s)
}

// getSession reports the status of the bearer token's session. It is never
// activity: a status poll that extended the session would keep a forgotten
// tab signed in forever. A well-formed token whose session is over gets 200
// {"active":false,"reason":...}.
//
// An expired (but authentic, unrevoked) access token may still read the
// status, so that a page waking from sleep learns why its session ended.
func (p *Provider) getSession(w http.ResponseWriter, r *http.Request, id string) {
	st, err := p.useToken(r.Context(), id, 0, zeroTime)
	if errors.Is(err, errTokenExpired) {
		st, err = p.sessionOfExpiredToken(r.Context(), id)
	}
	switch {
	case errors.Is(err, activity.ErrSessionOver):
		writeJSON(w, http.StatusOK, toStatus(st))
	case isTokenError(err):
		writeBearerError(w, err)
	case err != nil:
		p.serverError(w, r, err)
	default:
		writeJSON(w, http.StatusOK, toStatus(st))
	}
}

func (p *Provider) sessionOfExpiredToken(ctx context.Context, id string) (activity.Status, error) {
	tid, err := parseTokenID(id)
	if err != nil || tid.appSessionID == "" {
		return activity.Status{}, errTokenInvalid
	}
	st, err := p.tracker.Check(ctx, tid.appSessionID)
	if err != nil {
		return activity.Status{}, errTokenInvalid
	}
	if !st.Active {
		return st, &activity.SessionOverError{Reason: st.EndReason}
	}
	return st, errTokenExpired // alive: the app must renew its token
}

// whyExpired turns the refusal of an expired access token (err
// errTokenExpired) into the end of its session when that is over, so that
// the caller learns why (a page woken from sleep, an API told to refuse);
// any other result of using token id passes through.
func (p *Provider) whyExpired(ctx context.Context, id string, st activity.Status, err error) (activity.Status, error) {
	if !errors.Is(err, errTokenExpired) {
		return st, err
	}
	if over, oerr := p.sessionOfExpiredToken(ctx, id); errors.Is(oerr, activity.ErrSessionOver) {
		return over, oerr
	}
	return st, err
}

// activityRequest is the optional body of POST /activity.
type activityRequest struct {
	// LastInteraction is the time of the person's last interaction, in Unix
	// seconds (a number) or RFC 3339 (a string), for a backend that batches
	// heartbeats. The provider clamps it to [previous last activity, now].
	LastInteraction json.RawMessage `json:"last_interaction"`
	// InteractionAge is how many seconds ago the interaction was, measured
	// on the sender's monotonic clock: what the browser library sends, so
	// that a device whose wall clock is off neither loses nor gains time.
	InteractionAge *float64 `json:"interaction_age"`
}

func parseInteraction(raw json.RawMessage) (time.Time, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return zeroTime, nil
	}
	var secs float64
	if err := json.Unmarshal(raw, &secs); err == nil {
		if math.IsNaN(secs) || math.IsInf(secs, 0) || secs < 0 || secs > 1e11 {
			return zeroTime, errors.New("last_interaction is out of range")
		}
		whole, frac := math.Modf(secs)
		return time.Unix(int64(whole), int64(frac*1e9)), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return zeroTime, errors.New("last_interaction must be Unix seconds or an RFC 3339 time")
		}
		return t, nil
	}
	return zeroTime, errors.New("last_interaction must be Unix seconds or an RFC 3339 time")
}

// postActivity is the heartbeat: evidence that the person is there, from the
// browser library or the app's backend.
func (p *Provider) postActivity(w http.ResponseWriter, r *http.Request, id string) {
	var body activityRequest
	at := zeroTime
	if r.ContentLength != 0 {
		data, err := io.ReadAll(io.LimitReader(r.Body, 4096))
		if err == nil && len(strings.TrimSpace(string(data))) > 0 {
			err = json.Unmarshal(data, &body)
		}
		if err == nil {
			at, err = parseInteraction(body.LastInteraction)
		}
		if err == nil && body.InteractionAge != nil {
			age := *body.InteractionAge
			if age < 0 || age > 1e7 || math.IsNaN(age) {
				err = errors.New("interaction_age must be a number of seconds >= 0")
			} else {
				at = p.now().Add(-time.Duration(age * float64(time.Second)))
			}
		}
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "error_description": err.Error()})
			return
		}
	}
	st, err := p.useToken(r.Context(), id, activity.Heartbeat, at)
	st, err = p.whyExpired(r.Context(), id, st, err)
	switch {
	case errors.Is(err, activity.ErrSessionOver) || isTokenError(err):
		writeBearerError(w, err)
	case err != nil:
		p.serverError(w, r, err)
	default:
		writeJSON(w, http.StatusOK, toStatus(st))
	}
}

// bearerCORS parses the bearer access token once and applies CORS: the
// browser library may call from the token's client's registered
// web_origins only. A request from any other origin gets 403 and the
// handler never runs (so a foreign page cannot even count as activity).
func (p *Provider) bearerCORS(next func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := p.accessTokenID(bearer(r))
		origin := r.Header.Get("Origin")
		allowed := origin == ""
		if origin != "" {
			if err != nil {
				allowed = p.anyClientAllowsOrigin(origin) // so the page can read the 401
			} else if tid, perr := parseTokenID(id); perr == nil {
				allowed = p.tokenClientAllowsOrigin(r, tid, origin)
			}
			if !allowed {
				writeJSON(w, http.StatusForbidden, map[string]string{"error": "invalid_request", "error_description": "origin not allowed"})
				return
			}
			w.Header().Set("Access-Control-Allow-Origin", origin)
			w.Header().Add("Vary", "Origin")
		}
		switch {
		case err != nil && bearer(r) == "":
			writeNoToken(w)
		case err != nil:
			writeBearerError(w, errTokenInvalid)
		default:
			next(w, r, id)
		}
	}
}

func (p *Provider) tokenClientAllowsOrigin(r *http.Request, tid tokenID, origin string) bool {
	if tid.appSessionID == "" {
		c, ok := p.clients[tid.clientID]
		return ok && c.AllowsOrigin(origin)
	}
	st, err := p.tracker.Check(r.Context(), tid.appSessionID)
	if err != nil {
		return p.anyClientAllowsOrigin(origin) // unknown session: the handler answers 401
	}
	c, ok := p.clients[st.ClientID]
	return ok && c.AllowsOrigin(origin)
}

func (p *Provider) anyClientAllowsOrigin(origin string) bool {
	for _, c := range p.clients {
		if c.AllowsOrigin(origin) {
			return true
		}
	}
	return false
}

// preflight answers CORS preflight for /activity and /session from any
// registered web origin.
func (p *Provider) preflight(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("Origin")
	if origin == "" || !p.anyClientAllowsOrigin(origin) {
		w.WriteHeader(http.StatusForbidden)
		return
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	h.Add("Vary", "Origin")
	h.Set("Access-Control-Allow-Methods", "GET, POST")
	h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type")
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
}
