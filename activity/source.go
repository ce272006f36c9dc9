package activity

import (
	"fmt"
	"strings"
)

// Source is one kind of evidence that a person is present.
type Source uint8

// The activity sources of the idle model.
const (
	Login Source = 1 << iota
	SSO
	Heartbeat
	Introspection
	Userinfo
	Refresh
	// API is a call to an API through a gateway that asks the provider
	// (GET /forward-auth), or reported afterwards by an API that validates
	// tokens itself (POST /activity/batch): the person used the app.
	API
)

var sourceNames = []struct {
	s    Source
	name string
}{
	{Login, "login"}, {SSO, "sso"}, {Heartbeat, "heartbeat"},
	{Introspection, "introspection"}, {Userinfo, "userinfo"}, {Refresh, "refresh"}, {API, "api"},
}

func (s Source) String() string {
	var parts []string
	for _, n := range sourceNames {
		if s&n.s != 0 {
			parts = append(parts, n.name)
		}
	}
	return strings.Join(parts, ",")
}

// DefaultSources is what a client counts when its config has no activity
// list: everything but refresh, because SPA libraries refresh on a timer
// whether or not anyone is there.
const DefaultSources = Login | SSO | Heartbeat | Introspection | Userinfo | API

// ParseSources reads a client's `activity:` list. Login is always on.
func ParseSources(names []string) (Source, error) {
	set := Login
	for _, name := range names {
		found := false
		for _, n := range sourceNames {
			if n.name == name {
				set |= n.s
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown activity source %q (want %s)", name, knownSources())
		}
	}
	return set, nil
}

// knownSources lists the source names for an error message: "a, b or c".
func knownSources() string {
	names := make([]string, len(sourceNames))
	for i, n := range sourceNames {
		names[i] = n.name
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}
