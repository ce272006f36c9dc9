package activity

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idleguard/idleguard/session"
)

var p0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestStricterLimit(t *testing.T) {
	for _, tc := range []struct {
		name string
		l    time.Duration
		p    ClientPolicy
		want time.Duration
	}{
		{"stricter app pulls the limit down", 15 * time.Minute, ClientPolicy{IdleTimeout: 5 * time.Minute}, 5 * time.Minute},
		{"laxer app changes nothing", 15 * time.Minute, ClientPolicy{IdleTimeout: time.Hour}, 15 * time.Minute},
		{"app without a limit of its own", 15 * time.Minute, ClientPolicy{}, 15 * time.Minute},
		{"exempt app never pulls it down", 15 * time.Minute, ClientPolicy{IdleTimeout: time.Minute, Exempt: true}, 15 * time.Minute},
		{"app_idle_timeout is the app's alone", 15 * time.Minute, ClientPolicy{AppIdleTimeout: time.Minute}, 15 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) { require.Equal(t, tc.want, StricterLimit(tc.l, tc.p)) })
	}
}

func TestDeadline(t *testing.T) {
	for _, tc := range []struct {
		name     string
		absolute time.Time
		want     time.Time
	}{
		{"idle deadline first", p0.Add(time.Hour), p0.Add(5 * time.Minute)},
		{"absolute deadline first", p0.Add(time.Minute), p0.Add(time.Minute)},
		{"both at once", p0.Add(5 * time.Minute), p0.Add(5 * time.Minute)},
	} {
		t.Run(tc.name, func(t *testing.T) { require.Equal(t, tc.want, Deadline(p0, 5*time.Minute, tc.absolute)) })
	}
}

func TestAppDeadline(t *testing.T) {
	ceiling, abs := 15*time.Minute, p0.Add(time.Hour)
	for _, tc := range []struct {
		name      string
		p         ClientPolicy
		absolute  time.Time
		wantLimit time.Duration
		want      time.Time
	}{
		{"ordinary app: none of its own", ClientPolicy{IdleTimeout: 5 * time.Minute}, abs, 0, time.Time{}},
		{"app_idle_timeout", ClientPolicy{AppIdleTimeout: 3 * time.Minute}, abs, 3 * time.Minute, p0.Add(3 * time.Minute)},
		{"app_idle_timeout ignores the absolute deadline (the session's end takes the app)", ClientPolicy{AppIdleTimeout: 3 * time.Minute},
			p0.Add(time.Minute), 3 * time.Minute, p0.Add(3 * time.Minute)},
		{"exempt: its own idle_timeout", ClientPolicy{Exempt: true, IdleTimeout: 2 * time.Hour}, p0.Add(12 * time.Hour), 2 * time.Hour, p0.Add(2 * time.Hour)},
		{"exempt: capped by the absolute deadline", ClientPolicy{Exempt: true, IdleTimeout: 2 * time.Hour}, abs, 2 * time.Hour, abs},
		{"exempt without a limit: the ceiling", ClientPolicy{Exempt: true}, abs, ceiling, p0.Add(ceiling)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.wantLimit, OwnLimit(tc.p, ceiling))
			require.Equal(t, tc.want, AppDeadline(tc.p, ceiling, p0, tc.absolute))
		})
	}
}

func TestExpiryReason(t *testing.T) {
	abs := p0.Add(time.Hour)
	for _, tc := range []struct {
		name    string
		now     time.Time
		appIdle bool
		want    session.Reason
	}{
		{"idle", p0, false, session.ReasonIdleTimeout},
		{"the app alone idle", p0, true, session.ReasonAppIdleTimeout},
		{"absolute deadline reached", abs, false, session.ReasonMaxLifetime},
		{"absolute deadline wins over the app's idleness", abs.Add(time.Second), true, session.ReasonMaxLifetime},
	} {
		t.Run(tc.name, func(t *testing.T) { require.Equal(t, tc.want, ExpiryReason(tc.now, abs, tc.appIdle)) })
	}
}

func TestSlack(t *testing.T) {
	for limit, want := range map[time.Duration]time.Duration{
		2 * time.Second: 200 * time.Millisecond, 5 * time.Minute: 30 * time.Second, time.Hour: 30 * time.Second,
	} {
		require.Equal(t, want, Slack(limit), limit)
	}
}
