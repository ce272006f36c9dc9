package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"
)

// kind is one kind of request in the mix.
type kind int

const (
	kindIntrospect  kind = iota // POST /oauth/introspect by the resource server
	kindHeartbeat               // POST /activity with the access token
	kindRefresh                 // refresh-token grant (rotation, ID token and access token signed)
	kindSSO                     // a second app's authorize answered from the session, up to the code
	kindStatus                  // GET /session (not activity)
	kindUserinfo                // GET /userinfo
	kindHealth                  // GET /healthz: the floor of an HTTP round trip to the provider
	kindForwardAuth             // GET /forward-auth?aud=load-app, as a gateway asks before an API call
	numKinds
)

var kindName = [numKinds]string{"introspect", "heartbeat", "refresh", "sso", "status", "userinfo", "health", "forwardauth"}

func kindNames() []string { return kindName[:] }

// mix is the weight of each kind.
type mix [numKinds]int

func parseMix(spec string) (mix, error) {
	var m mix
	total := 0
	for part := range strings.SplitSeq(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, weight, ok := strings.Cut(part, "=")
		if !ok {
			return m, fmt.Errorf("-mix: %q is not kind=weight", part)
		}
		i := slices.Index(kindName[:], strings.TrimSpace(name))
		if i < 0 {
			return m, fmt.Errorf("-mix: unknown kind %q (want %s)", name, strings.Join(kindName[:], ", "))
		}
		w, err := strconv.Atoi(strings.TrimSpace(weight))
		if err != nil || w < 0 {
			return m, fmt.Errorf("-mix: weight of %s must be a whole number >= 0", name)
		}
		m[i] += w
		total += w
	}
	if total == 0 {
		return m, errors.New("-mix: give at least one kind a positive weight")
	}
	return m, nil
}

func (m mix) String() string {
	var parts []string
	for k, w := range m {
		if w > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", kindName[k], w))
		}
	}
	return strings.Join(parts, ",")
}

// pick draws a kind with probability proportional to its weight.
func (m mix) pick(rng *rand.Rand) kind {
	total := 0
	for _, w := range m {
		total += w
	}
	r := rng.IntN(total)
	for k, w := range m {
		if r < w {
			return kind(k)
		}
		r -= w
	}
	return kindIntrospect
}

// result is what a run measured.
type result struct {
	elapsed     time.Duration
	latencies   [numKinds][]time.Duration // successful requests
	errors      [numKinds]int64
	sampleErrs  []string
	interrupted bool
}

// drive runs the mix with o.concurrency workers until o.duration has
// passed (each worker finishes the request it is in), printing a progress
// line every second.
func (c *loadClient) drive(ctx context.Context, sessions []*loadSession, o options, progress io.Writer) *result {
	var counts, errCounts [numKinds]atomic.Int64
	res := &result{}
	var mu sync.Mutex
	start := time.Now()
	deadline := start.Add(o.duration)
	var wg sync.WaitGroup
	for w := range o.concurrency {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(start.UnixNano())))
			var lat [numKinds][]time.Duration
			var errs [numKinds]int64
			var samples []string
			for ctx.Err() == nil && time.Now().Before(deadline) {
				k := o.mix.pick(rng)
				d, err := c.op(ctx, k, sessions, rng)
				if err != nil {
					if ctx.Err() != nil {
						break // interrupted: not the provider's error
					}
					errs[k]++
					errCounts[k].Add(1)
					if len(samples) < 3 {
						samples = append(samples, err.Error())
					}
					continue
				}
				lat[k] = append(lat[k], d)
				counts[k].Add(1)
			}
			mu.Lock()
			defer mu.Unlock()
			for k := range lat {
				res.latencies[k] = append(res.latencies[k], lat[k]...)
				res.errors[k] += errs[k]
			}
			for _, s := range samples {
				if len(res.sampleErrs) < 5 {
					res.sampleErrs = append(res.sampleErrs, s)
				}
			}
		})
	}
	stop := make(chan struct{})
	var pwg sync.WaitGroup
	pwg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		var last [numKinds]int64
		lastAt := start
		for {
			select {
			case <-stop:
				return
			case now := <-t.C:
				var b strings.Builder
				var total, totalErr int64
				secs := now.Sub(lastAt).Seconds()
				for k := range numKinds {
					n := counts[k].Load()
					total += n - last[k]
					totalErr += errCounts[k].Load()
					if o.mix[k] > 0 {
						fmt.Fprintf(&b, " %s %.0f/s", kindName[k], float64(n-last[k])/secs)
					}
					last[k] = n
				}
				lastAt = now
				mem := c.p.memory()
				fmt.Fprintf(progress, "[%5.1fs] %7.0f req/s |%s | errors %d | provider RSS %s\n",
					now.Sub(start).Seconds(), float64(total)/secs, b.String(), totalErr, mb(mem.rss))
			}
		}
	})
	wg.Wait()
	res.elapsed = time.Since(start)
	close(stop)
	pwg.Wait()
	res.interrupted = ctx.Err() != nil
	for k := range res.latencies {
		slices.Sort(res.latencies[k])
	}
	return res
}

// percentile of sorted durations (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

type reportData struct {
	opts                          options
	res                           *result
	signIn                        time.Duration
	rssStart, rssSignedIn, rssEnd memInfo
	peakReset                     bool // rssEnd.peak excludes start-up
	providerCPU, loadCPU          time.Duration
	db                            dbFiles
	writes                        dbWrites
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func report(w io.Writer, d reportData) {
	o, res := d.opts, d.res
	secs := res.elapsed.Seconds()
	fmt.Fprintf(w, "\nidleguard-load: %d sessions signed in through the endpoints", o.sessions)
	if o.seedSQL > 0 {
		fmt.Fprintf(w, " + %d idle-but-live sessions SEEDED BY SQL (in the database only, never used, not in the provider's memory)", o.seedSQL)
	}
	fmt.Fprintf(w, "\n  %d provider(s) on %s, %s signing keys, %s access tokens, %d workers, mix %s, %.1fs", o.replicas, o.database,
		o.alg, o.token, o.concurrency, o.mix, secs)
	if res.interrupted {
		fmt.Fprint(w, " (INTERRUPTED)")
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "kind\trequests\treq/s\tp50\tp99\tmax\terrors\t")
	var total, totalErr int64
	var all []time.Duration
	for k := range numKinds {
		lat := res.latencies[k]
		if o.mix[k] == 0 && len(lat) == 0 && res.errors[k] == 0 {
			continue
		}
		n := int64(len(lat))
		total += n
		totalErr += res.errors[k]
		all = append(all, lat...)
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t%s\t%s\t%d\t\n", kindName[k], n, float64(n)/secs,
			ms(percentile(lat, 0.50)), ms(percentile(lat, 0.99)), ms(percentile(lat, 1)), res.errors[k])
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	fmt.Fprintf(tw, "total\t%d\t%.0f\t%s\t%s\t%s\t%d\t\n", total, float64(total)/secs,
		ms(percentile(all, 0.50)), ms(percentile(all, 0.99)), ms(percentile(all, 1)), totalErr)
	tw.Flush()
	for _, e := range res.sampleErrs {
		fmt.Fprintf(w, "  error: %s\n", e)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "sign-in of %d people (authorize, login form, code exchange): %s, %.0f/s\n",
		o.sessions, d.signIn.Round(time.Millisecond), float64(o.sessions)/d.signIn.Seconds())
	if d.peakReset {
		fmt.Fprintf(w, "provider memory: peak RSS (VmHWM) %s during sign-ins and run, %s during start-up; RSS after start %s, after sign-ins %s, at the end %s\n",
			mb(d.rssEnd.peak), mb(d.rssStart.peak), mb(d.rssStart.rss), mb(d.rssSignedIn.rss), mb(d.rssEnd.rss))
	} else {
		fmt.Fprintf(w, "provider memory: peak RSS (VmHWM) %s since start; RSS after start %s, after sign-ins %s, at the end %s\n",
			mb(max(d.rssEnd.peak, d.rssStart.peak)), mb(d.rssStart.rss), mb(d.rssSignedIn.rss), mb(d.rssEnd.rss))
	}
	if d.providerCPU > 0 && total > 0 {
		fmt.Fprintf(w, "CPU during the run: provider %.1fs (%.0f µs/request, %.0f req/s per provider core), load tool %.1fs, machine wall %.1fs x %d cores\n",
			d.providerCPU.Seconds(), float64(d.providerCPU.Microseconds())/float64(total), float64(total)/d.providerCPU.Seconds(),
			d.loadCPU.Seconds(), secs, numCPU())
	}
	if d.db.db > 0 {
		live := o.sessions + o.seedSQL
		fmt.Fprintf(w, "database: %s + wal %s = %s for %d sessions (%d users): %.0f bytes/session\n",
			mb(d.db.db), mb(d.db.wal), mb(d.db.db+d.db.wal), live, o.sessions, float64(d.db.db+d.db.wal)/float64(live))
	}
	reportWrites(w, d.writes, res, total)
}

// reportWrites prints PostgreSQL's writes during the run: what coalescing
// leaves of the activity the requests carried.
func reportWrites(w io.Writer, wr dbWrites, res *result, total int64) {
	if !wr.ok || wr.elapsed <= 0 || total == 0 {
		return
	}
	secs := wr.elapsed.Seconds()
	fmt.Fprintf(w, "PostgreSQL writes during the run: %d write transactions (%.1f/s, %.4f per request), WAL %.1f kB (%.1f bytes per request)\n",
		wr.xids, float64(wr.xids)/secs, float64(wr.xids)/float64(total), float64(wr.walBytes)/1024, float64(wr.walBytes)/float64(total))
	if hb := int64(len(res.latencies[kindHeartbeat])); hb == total {
		fmt.Fprintf(w, "  heartbeats only: %.4f write transactions per heartbeat\n", float64(wr.xids)/float64(hb))
	}
}

// compare prints each kind's throughput in got as a share of ref (the
// SQLite baseline of the same run).
func compare(w io.Writer, o options, ref, got *result) {
	fmt.Fprintf(w, "\n%d provider(s) on %s against one provider on SQLite, same options, same machine, one after the other:\n", o.replicas, o.database)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "kind\tSQLite req/s\tthis run req/s\tshare\t")
	var refTotal, gotTotal float64
	for k := range numKinds {
		if o.mix[k] == 0 {
			continue
		}
		r := float64(len(ref.latencies[k])) / ref.elapsed.Seconds()
		g := float64(len(got.latencies[k])) / got.elapsed.Seconds()
		refTotal, gotTotal = refTotal+r, gotTotal+g
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.0f%%\t\n", kindName[k], r, g, 100*g/max(r, 1e-9))
	}
	fmt.Fprintf(tw, "total\t%.0f\t%.0f\t%.0f%%\t\n", refTotal, gotTotal, 100*gotTotal/max(refTotal, 1e-9))
	tw.Flush()
}

func numCPU() int { return runtime.NumCPU() }
