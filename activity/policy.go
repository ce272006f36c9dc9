package activity

import (
	"time"

	"github.com/idleguard/idleguard/session"
)

// The rules of the idle model (docs/idle-model.md), as pure functions
// of their inputs. The tracker feeds them from memory; policy_test.go
// tables them apart from any store or HTTP.

// StricterLimit returns the effective idle limit l after counting one live
// application session of a client with policy p: the strictest app wins;
// exempt apps and apps without a limit of their own do not pull it down.
func StricterLimit(l time.Duration, p ClientPolicy) time.Duration {
	if !p.Exempt && p.IdleTimeout > 0 && p.IdleTimeout < l {
		return p.IdleTimeout
	}
	return l
}

// Deadline is when a session is over: min(last activity + limit, absolute
// deadline).
func Deadline(lastActive time.Time, limit time.Duration, absolute time.Time) time.Time {
	return minTime(lastActive.Add(limit), absolute)
}

// OwnLimit is the limit an application session has of its own: an exempt
// app's idle_timeout (the provider's ceiling when it has none), or
// app_idle_timeout; zero when the app ends only with its session.
func OwnLimit(p ClientPolicy, ceiling time.Duration) time.Duration {
	if !p.Exempt {
		return p.AppIdleTimeout
	}
	if p.IdleTimeout > 0 {
		return p.IdleTimeout
	}
	return ceiling
}

// AppDeadline is when an application session ends on its own, from its own
// last activity: exempt apps also by the absolute deadline. Zero when it
// has no deadline of its own.
func AppDeadline(p ClientPolicy, ceiling time.Duration, lastActive, absolute time.Time) time.Time {
	l := OwnLimit(p, ceiling)
	if l <= 0 {
		return time.Time{}
	}
	if p.Exempt {
		return Deadline(lastActive, l, absolute)
	}
	return lastActive.Add(l)
}

// ExpiryReason says why a session (or an app alone, appIdle) that is over
// by the clock at now ended: the absolute deadline first, then the app's
// own inactivity, else the shared idle limit.
func ExpiryReason(now, absolute time.Time, appIdle bool) session.Reason {
	switch {
	case !now.Before(absolute):
		return session.ReasonMaxLifetime
	case appIdle:
		return session.ReasonAppIdleTimeout
	default:
		return session.ReasonIdleTimeout
	}
}

// Slack is how far activity in memory may run ahead of the store before it
// is written: a tenth of the effective limit, at most 30s.
func Slack(limit time.Duration) time.Duration { return min(limit/10, 30*time.Second) }

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
