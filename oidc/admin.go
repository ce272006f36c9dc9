package oidc

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/idleguard/idleguard/session"
)

// AdminStore is what the admin API reads.
type AdminStore interface {
	SessionsOfUser(ctx context.Context, userID string, withEnded bool) ([]*session.AuthSession, map[string][]*session.AppSession, error)
	AuthSession(ctx context.Context, id string) (*session.AuthSession, []*session.AppSession, error)
	Audit(ctx context.Context, f session.AuditFilter) ([]session.AuditEvent, error)
	AddAudit(ctx context.Context, ev session.AuditEvent) error
}

// admin guards the admin API with the configured bearer token.
func (p *Provider) admin(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if len(p.cfg.AdminTokenHash) == 0 {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "not_found", "error_description": "the admin API is disabled (set admin.token)"})
			return
		}
		sum := sha256.Sum256([]byte(bearer(r)))
		if subtle.ConstantTimeCompare(sum[:], p.cfg.AdminTokenHash) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="idleguard-admin"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_token", "error_description": "admin token required"})
			return
		}
		next(w, r)
	}
}

// SessionView is how the admin API and CLI show an authentication session.
type SessionView struct {
	SID              string           `json:"sid"`
	UserID           string           `json:"user_id"`
	Username         string           `json:"username,omitempty"`
	Active           bool             `json:"active"`
	AuthTime         time.Time        `json:"auth_time"`
	LastActiveAt     time.Time        `json:"last_active_at"`
	IdleTimeout      string           `json:"idle_timeout"`
	IdleDeadline     time.Time        `json:"idle_deadline"`
	Deadline         time.Time        `json:"deadline"`
	AbsoluteDeadline time.Time        `json:"absolute_deadline"`
	EndedAt          *time.Time       `json:"ended_at,omitempty"`
	EndReason        string           `json:"end_reason,omitempty"`
	EndedBy          string           `json:"ended_by,omitempty"`
	Apps             []AppSessionView `json:"apps"`
}

// AppSessionView is one application session in a SessionView.
type AppSessionView struct {
	ID           string     `json:"id"`
	ClientID     string     `json:"client_id"`
	Exempt       bool       `json:"idle_exempt"`
	JoinedAt     time.Time  `json:"joined_at"`
	LastActiveAt time.Time  `json:"last_active_at"`
	Deadline     *time.Time `json:"deadline,omitempty"`
	EndedAt      *time.Time `json:"ended_at,omitempty"`
	EndReason    string     `json:"end_reason,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// UserSessions returns a user's sessions as the admin API shows them, with
// live figures (last activity, deadlines) from the activity tracker.
func (p *Provider) UserSessions(ctx context.Context, username string, withEnded bool) ([]SessionView, error) {
	u, err := p.store.UserByUsername(ctx, username)
	if err != nil {
		return nil, err
	}
	sessions, _, err := p.store.SessionsOfUser(ctx, u.ID, withEnded)
	if err != nil {
		return nil, err
	}
	out := make([]SessionView, 0, len(sessions))
	for _, s := range sessions {
		v, err := p.SessionView(ctx, s.ID)
		if err != nil {
			return nil, err
		}
		v.Username = u.Username
		out = append(out, v)
	}
	return out, nil
}

// SessionView describes one authentication session.
// The figures are the tracker's live ones: nothing is flushed or re-read
// per session.
func (p *Provider) SessionView(ctx context.Context, sid string) (SessionView, error) {
	snap, err := p.tracker.Snapshot(ctx, sid)
	if err != nil {
		return SessionView{}, err
	}
	a, apps, st := snap.Auth, snap.Apps, snap.Status
	v := SessionView{SID: a.ID, UserID: a.UserID, Active: st.Active, AuthTime: a.AuthTime, LastActiveAt: a.LastActiveAt,
		IdleTimeout: st.IdleLimit.String(), IdleDeadline: st.IdleDeadline, Deadline: st.Deadline, AbsoluteDeadline: a.AbsoluteDeadline,
		EndedAt: timePtr(a.EndedAt), EndReason: string(a.EndReason), EndedBy: a.EndedBy, Apps: []AppSessionView{}}
	for _, app := range apps {
		v.Apps = append(v.Apps, AppSessionView{ID: app.ID, ClientID: app.ClientID, Exempt: app.IdleExempt, JoinedAt: app.JoinedAt,
			LastActiveAt: app.LastActiveAt, Deadline: timePtr(app.Deadline), EndedAt: timePtr(app.EndedAt), EndReason: string(app.EndReason)})
	}
	return v, nil
}

// EndSessionByAdmin ends one session with reason admin.
func (p *Provider) EndSessionByAdmin(ctx context.Context, sid string) error {
	return p.tracker.End(ctx, sid, session.ReasonAdmin, "admin")
}

// EndUserSessionsByAdmin ends every live session of a user with reason admin.
func (p *Provider) EndUserSessionsByAdmin(ctx context.Context, username string) (int, error) {
	u, err := p.store.UserByUsername(ctx, username)
	if err != nil {
		return 0, err
	}
	sessions, _, err := p.store.SessionsOfUser(ctx, u.ID, false)
	if err != nil {
		return 0, err
	}
	return len(sessions), p.endUserSessions(ctx, u.ID, session.ReasonAdmin, "admin")
}

func (p *Provider) adminError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, session.ErrNotFound) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "not_found", "error_description": err.Error()})
		return
	}
	p.serverError(w, r, err)
}

func (p *Provider) adminListSessions(w http.ResponseWriter, r *http.Request) {
	user := r.URL.Query().Get("user")
	if user == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "error_description": "the user parameter is required"})
		return
	}
	views, err := p.UserSessions(r.Context(), user, r.URL.Query().Get("ended") == "1")
	if err != nil {
		p.adminError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"sessions": views})
}

func (p *Provider) adminEndSession(w http.ResponseWriter, r *http.Request) {
	sid := r.PathValue("sid")
	if err := p.EndSessionByAdmin(r.Context(), sid); err != nil {
		p.adminError(w, r, err)
		return
	}
	v, err := p.SessionView(r.Context(), sid)
	if err != nil {
		p.adminError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (p *Provider) adminEndUserSessions(w http.ResponseWriter, r *http.Request) {
	n, err := p.EndUserSessionsByAdmin(r.Context(), r.PathValue("user"))
	if err != nil {
		p.adminError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"ended": n})
}

// Audit returns audit events for a username and/or session.
func (p *Provider) Audit(ctx context.Context, username, sid string, limit int) ([]session.AuditEvent, error) {
	f := session.AuditFilter{SID: sid, Limit: limit}
	if username != "" {
		u, err := p.store.UserByUsername(ctx, username)
		if err != nil {
			return nil, err
		}
		f.UserID = u.ID
	}
	return p.store.Audit(ctx, f)
}

func (p *Provider) adminAudit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, _ := strconv.Atoi(q.Get("limit"))
	events, err := p.Audit(r.Context(), q.Get("user"), q.Get("sid"), limit)
	if err != nil {
		p.adminError(w, r, err)
		return
	}
	if events == nil {
		events = []session.AuditEvent{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"events": events})
}

type deliveryView struct {
	JTI         string     `json:"jti"`
	ClientID    string     `json:"client_id"`
	SID         string     `json:"sid"`
	Reason      string     `json:"reason"`
	CreatedAt   time.Time  `json:"created_at"`
	Attempts    int        `json:"attempts"`
	LastError   string     `json:"last_error,omitempty"`
	DeliveredAt *time.Time `json:"delivered_at,omitempty"`
	AbandonedAt *time.Time `json:"abandoned_at,omitempty"`
	NextAttempt *time.Time `json:"next_attempt_at,omitempty"`
}

func (p *Provider) adminDeliveries(w http.ResponseWriter, r *http.Request) {
	rows, err := p.store.Deliveries(r.Context(), r.URL.Query().Get("sid"))
	if err != nil {
		p.adminError(w, r, err)
		return
	}
	out := make([]deliveryView, 0, len(rows))
	for _, o := range rows {
		v := deliveryView{JTI: o.JTI, ClientID: o.ClientID, SID: o.SID, Reason: string(o.Reason), CreatedAt: o.CreatedAt,
			Attempts: o.Attempts, LastError: o.LastError, DeliveredAt: timePtr(o.DeliveredAt), AbandonedAt: timePtr(o.AbandonedAt)}
		if o.DeliveredAt.IsZero() && o.AbandonedAt.IsZero() {
			v.NextAttempt = timePtr(o.NextAttemptAt)
		}
		out = append(out, v)
	}
	writeJSON(w, http.StatusOK, map[string]any{"deliveries": out})
}
