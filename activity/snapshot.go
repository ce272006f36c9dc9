package activity

import (
	"context"
	"slices"

	"github.com/idleguard/idleguard/session"
)

// Snapshot is one authentication session as the tracker holds it: the live
// figures (activity not yet written included), for admin views.
type Snapshot struct {
	Auth   session.AuthSession
	Apps   []session.AppSession // oldest first; Deadline is each app's own deadline now
	Status Status               // of the authentication session
}

// Snapshot returns a copy of session sid as memory holds it, loading it if
// needed. It writes nothing and counts as no activity. With several
// replicas it reads the store first, so that it includes what the others
// wrote.
func (t *Tracker) Snapshot(ctx context.Context, sid string) (Snapshot, error) {
	if err := t.reloadHeldOne(ctx, sid); err != nil {
		return Snapshot{}, err
	}
	sh, e, err := t.get(ctx, sid)
	if err != nil {
		return Snapshot{}, err
	}
	now := t.cfg.Now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	s := Snapshot{Auth: e.auth, Status: t.sessionStatus(e, now)}
	s.Auth.AMR = slices.Clone(e.auth.AMR)
	s.Auth.IdleLimit, s.Auth.Deadline = s.Status.IdleLimit, s.Status.Deadline
	for _, a := range e.apps {
		app := a.AppSession
		app.Scopes, app.RefreshChains = slices.Clone(a.Scopes), nil
		app.Deadline = t.appDeadline(e, a)
		s.Apps = append(s.Apps, app)
	}
	return s, nil
}
