package storetest

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idleguard/idleguard/session"
)

func newUser(t *testing.T, s Store, name string) *session.User {
	t.Helper()
	u := &session.User{Username: name, PasswordHash: "h", CreatedAt: t0}
	require.NoError(t, s.CreateUser(t.Context(), u))
	return u
}

func testTOTPStep(t *testing.T, s Store) {
	ctx := t.Context()
	u := newUser(t, s, "alice")
	_, err := s.TOTP(ctx, u.ID)
	require.ErrorIs(t, err, session.ErrNotFound)
	require.NoError(t, s.SetTOTP(ctx, session.TOTPFactor{UserID: u.ID, Secret: []byte("S1"), Sealed: true, LastStep: 7, CreatedAt: t0}, nil, "cli"))
	f, err := s.TOTP(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, []byte("S1"), f.Secret)
	require.True(t, f.Sealed)
	require.EqualValues(t, 7, f.LastStep, "the confirming code's step is used")

	ok, err := s.UseTOTPStep(ctx, u.ID, 7)
	require.NoError(t, err)
	require.False(t, ok, "the confirming step again")
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			ok, err := s.UseTOTPStep(ctx, u.ID, 9)
			require.NoError(t, err)
			if ok {
				wins.Add(1)
			}
		})
	}
	wg.Wait()
	require.EqualValues(t, 1, wins.Load(), "one step, one use, however many race")
	ok, err = s.UseTOTPStep(ctx, u.ID, 8)
	require.NoError(t, err)
	require.False(t, ok, "an earlier step after a later one")

	require.NoError(t, s.SetTOTP(ctx, session.TOTPFactor{UserID: u.ID, Secret: []byte("S2"), CreatedAt: t0}, nil, "cli"))
	f, err = s.TOTP(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, []byte("S2"), f.Secret, "enrolling again replaces")
	require.False(t, f.Sealed)
	require.Zero(t, f.LastStep)
}

func testRecoveryCodes(t *testing.T, s Store) {
	ctx := t.Context()
	u, v := newUser(t, s, "alice"), newUser(t, s, "bob")
	require.NoError(t, s.SetTOTP(ctx, session.TOTPFactor{UserID: u.ID, Secret: []byte("S"), CreatedAt: t0}, []string{"h1", "h2"}, "cli"))
	require.NoError(t, s.SetTOTP(ctx, session.TOTPFactor{UserID: v.ID, Secret: []byte("S"), CreatedAt: t0}, []string{"h3"}, "cli"))
	f, err := s.Factors(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, session.Factors{TOTP: true, RecoveryCodes: 2}, f)

	ok, err := s.UseRecoveryCode(ctx, u.ID, "h3", t0)
	require.NoError(t, err)
	require.False(t, ok, "another person's code")
	ok, err = s.UseRecoveryCode(ctx, u.ID, "h1", t0)
	require.NoError(t, err)
	require.True(t, ok)
	ok, err = s.UseRecoveryCode(ctx, u.ID, "h1", t0)
	require.NoError(t, err)
	require.False(t, ok, "a code works once")
	f, _ = s.Factors(ctx, u.ID)
	require.Equal(t, 1, f.RecoveryCodes)

	require.NoError(t, s.SetTOTP(ctx, session.TOTPFactor{UserID: u.ID, Secret: []byte("S"), CreatedAt: t0}, []string{"h4"}, "cli"))
	ok, err = s.UseRecoveryCode(ctx, u.ID, "h2", t0)
	require.NoError(t, err)
	require.False(t, ok, "enrolling again replaces the codes")
	events, err := s.Audit(ctx, session.AuditFilter{UserID: u.ID})
	require.NoError(t, err)
	require.Equal(t, 2, countKind(events, session.AuditFactorEnrolled))
}

func countKind(events []session.AuditEvent, kind string) int {
	n := 0
	for _, ev := range events {
		if ev.Kind == kind {
			n++
		}
	}
	return n
}

func testPasskeys(t *testing.T, s Store) {
	ctx := t.Context()
	u, v := newUser(t, s, "alice"), newUser(t, s, "bob")
	c := session.WebAuthnCredential{ID: []byte{1, 2, 3}, UserID: u.ID, Name: "laptop", Data: []byte(`{}`), SignCount: 5, CreatedAt: t0}
	require.NoError(t, s.AddWebAuthnCredential(ctx, c, "alice"))
	dup := c
	dup.UserID = v.ID
	require.ErrorIs(t, s.AddWebAuthnCredential(ctx, dup, "bob"), session.ErrConflict, "a credential id belongs to one person")
	zero := session.WebAuthnCredential{ID: []byte{9}, UserID: u.ID, Name: "phone", Data: []byte(`{}`), CreatedAt: t0.Add(time.Second)}
	require.NoError(t, s.AddWebAuthnCredential(ctx, zero, "alice"))

	list, err := s.WebAuthnCredentials(ctx, u.ID)
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.Equal(t, "laptop", list[0].Name)
	got, err := s.WebAuthnCredential(ctx, []byte{1, 2, 3})
	require.NoError(t, err)
	require.Equal(t, u.ID, got.UserID)
	require.EqualValues(t, 5, got.SignCount)

	for _, tc := range []struct {
		id    []byte
		count uint32
		ok    bool
	}{{[]byte{1, 2, 3}, 5, false}, {[]byte{1, 2, 3}, 4, false}, {[]byte{1, 2, 3}, 6, true}, {[]byte{1, 2, 3}, 6, false},
		{[]byte{9}, 0, true}, {[]byte{9}, 0, true}, {[]byte{9}, 3, true}, {[]byte{9}, 0, false}} {
		ok, err := s.UseWebAuthnCredential(ctx, tc.id, tc.count, t0.Add(time.Minute))
		require.NoError(t, err)
		require.Equal(t, tc.ok, ok, "credential %v count %d", tc.id, tc.count)
	}
	got, _ = s.WebAuthnCredential(ctx, []byte{1, 2, 3})
	require.Equal(t, t0.Add(time.Minute), got.LastUsedAt)

	require.ErrorIs(t, s.DeleteWebAuthnCredential(ctx, v.ID, []byte{1, 2, 3}, t0, "bob"), session.ErrNotFound, "only its owner removes it")
	require.NoError(t, s.DeleteWebAuthnCredential(ctx, u.ID, []byte{1, 2, 3}, t0, "alice"))
	_, err = s.WebAuthnCredential(ctx, []byte{1, 2, 3})
	require.ErrorIs(t, err, session.ErrNotFound)
	f, err := s.Factors(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, session.Factors{Passkeys: 1}, f)
}

func testFactorsReset(t *testing.T, s Store) {
	ctx := t.Context()
	u := newUser(t, s, "alice")
	require.NoError(t, s.SetTOTP(ctx, session.TOTPFactor{UserID: u.ID, Secret: []byte("S"), CreatedAt: t0}, []string{"h"}, "cli"))
	require.NoError(t, s.AddWebAuthnCredential(ctx, session.WebAuthnCredential{ID: []byte{1}, UserID: u.ID, Data: []byte(`{}`), CreatedAt: t0}, "alice"))
	f, _ := s.Factors(ctx, u.ID)
	require.True(t, f.Any())
	require.NoError(t, s.ResetMFA(ctx, u.ID, t0, "admin"))
	f, err := s.Factors(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, session.Factors{}, f)
	events, _ := s.Audit(ctx, session.AuditFilter{UserID: u.ID})
	require.Equal(t, 1, countKind(events, session.AuditFactorRemoved))

	v := newUser(t, s, "bob")
	require.NoError(t, s.SetTOTP(ctx, session.TOTPFactor{UserID: v.ID, Secret: []byte("S"), CreatedAt: t0}, []string{"h"}, "cli"))
	require.NoError(t, s.DeleteUser(ctx, "bob"))
	_, err = s.TOTP(ctx, v.ID)
	require.ErrorIs(t, err, session.ErrNotFound, "a deleted person's factors go with them")
}

func testCeremonies(t *testing.T, s Store) {
	ctx := t.Context()
	require.NoError(t, s.PutCeremony(ctx, "c1", "u1", []byte("challenge"), t0.Add(time.Minute)))
	require.NoError(t, s.PutCeremony(ctx, "c2", "", []byte("x"), t0.Add(time.Minute)))
	user, data, err := s.TakeCeremony(ctx, "c1", t0)
	require.NoError(t, err)
	require.Equal(t, "u1", user)
	require.Equal(t, []byte("challenge"), data)
	_, _, err = s.TakeCeremony(ctx, "c1", t0)
	require.ErrorIs(t, err, session.ErrNotFound, "taken once")
	_, _, err = s.TakeCeremony(ctx, "c2", t0.Add(time.Minute))
	require.ErrorIs(t, err, session.ErrNotFound, "expired")
	require.NoError(t, s.PutCeremony(ctx, "c3", "", []byte("x"), t0))
	require.NoError(t, s.PurgeCeremonies(ctx, t0))
	_, _, err = s.TakeCeremony(ctx, "c3", t0.Add(-time.Hour))
	require.ErrorIs(t, err, session.ErrNotFound, "purged")
}

func testRaiseAssurance(t *testing.T, s Store) {
	ctx := t.Context()
	a := newSession(t, s, "u1", t0.Add(5*time.Minute))
	before, err := s.LastSessionChange(ctx)
	require.NoError(t, err)
	raised := *a
	raised.AMR = []string{"pwd", "otp", "mfa"}
	require.NoError(t, s.RaiseAssurance(ctx, &raised, t0.Add(time.Minute), "factor=totp"))
	got, _, err := s.AuthSession(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, raised.AMR, got.AMR)
	require.Equal(t, t0, got.AuthTime, "a step-up keeps the sign-in's auth_time")
	changes, err := s.SessionChanges(ctx, before, 10)
	require.NoError(t, err)
	require.Len(t, changes, 1)
	require.Equal(t, a.ID, changes[0].SID)
	events, _ := s.Audit(ctx, session.AuditFilter{SID: a.ID})
	require.Equal(t, 1, countKind(events, session.AuditStepUp))

	require.NoError(t, s.EndSessions(ctx, session.End{At: t0.Add(2 * time.Minute), Reason: session.ReasonLogout, AuthSessionID: a.ID, UserID: "u1"}))
	require.ErrorIs(t, s.RaiseAssurance(ctx, &raised, t0.Add(3*time.Minute), ""), session.ErrNotFound, "an ended session rises no more")
}
