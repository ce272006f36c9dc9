package activity

import (
	"math/bits"
	"sync/atomic"

	"github.com/idleguard/idleguard/session"
)

// reasons are the end reasons counted by Stats, in a fixed order.
var reasons = []session.Reason{session.ReasonIdleTimeout, session.ReasonMaxLifetime, session.ReasonLogout,
	session.ReasonAppIdleTimeout, session.ReasonAdmin, session.ReasonRefreshReuse, session.ReasonCodeReuse}

// stats are lock-free counters for monitoring; the hot paths only add.
type stats struct {
	bySource [8]atomic.Uint64
	byReason [8]atomic.Uint64
}

func (s *stats) activity(src Source) {
	if src != 0 {
		s.bySource[bits.TrailingZeros8(uint8(src))].Add(1)
	}
}

func (s *stats) ended(r session.Reason) {
	for i, x := range reasons {
		if x == r {
			s.byReason[i].Add(1)
		}
	}
}

// Stats is a snapshot of the tracker's counters since start.
type Stats struct {
	Activity map[string]uint64 // counted activity by source
	Ends     map[string]uint64 // session ends (one per End, whether of a session or an app alone) by reason
	InMemory int               // authentication sessions held in memory
}

// Stats returns the counters and the number of sessions in memory.
func (t *Tracker) Stats() Stats {
	st := Stats{Activity: map[string]uint64{}, Ends: map[string]uint64{}}
	for _, n := range sourceNames {
		st.Activity[n.name] = t.stats.bySource[bits.TrailingZeros8(uint8(n.s))].Load()
	}
	for i, r := range reasons {
		st.Ends[string(r)] = t.stats.byReason[i].Load()
	}
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		st.InMemory += len(sh.m)
		sh.mu.Unlock()
	}
	return st
}
