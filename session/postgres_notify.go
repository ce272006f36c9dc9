package session

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// Reconnection and liveness of the listening connection.
const (
	listenBackoffMin = 100 * time.Millisecond
	listenBackoffMax = 10 * time.Second
	// listenCheck is how long the listener waits for a notification before
	// it pings its connection, so that a connection silently lost (a
	// network partition) is replaced rather than waited on forever.
	listenCheck = 30 * time.Second
)

// Changes returns a channel that receives after new change feed rows are
// committed (activity.ChangeNotifier), so that a replica applies another
// replica's end at once instead of at its next poll.
//
// It LISTENs on ChangesChannel on a connection of its own (outside the
// pool), to which every transaction that writes change rows sends a NOTIFY
// at its commit. Notifications arriving together are folded into one
// receive. When the connection is lost it reconnects with backoff and, once
// listening again, sends one receive, because notifications sent meanwhile
// are lost: the reader's poll of the feed, which the receive triggers,
// finds what they announced. The channel is closed when ctx is done or the
// store is closed.
func (p *Postgres) Changes(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(p.closing, cancel)
	p.listeners.Add(1)
	go func() {
		defer p.listeners.Done()
		defer close(ch)
		defer stop()
		defer cancel()
		p.listen(ctx, ch)
	}()
	return ch
}

// listen keeps a listening connection until ctx is done.
func (p *Postgres) listen(ctx context.Context, ch chan<- struct{}) {
	backoff := listenBackoffMin
	for {
		up, err := p.listenOnce(ctx, ch)
		if ctx.Err() != nil {
			return
		}
		if up {
			backoff = listenBackoffMin
		}
		slog.WarnContext(ctx, "change notifications lost; reconnecting", "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, listenBackoffMax)
	}
}

// listenOnce connects, listens and forwards notifications until the
// connection fails; up reports whether it got as far as listening.
func (p *Postgres) listenOnce(ctx context.Context, ch chan<- struct{}) (up bool, err error) {
	conn, err := pgx.ConnectConfig(ctx, p.connConfig.Copy())
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `LISTEN `+ChangesChannel); err != nil {
		return false, err
	}
	wake(ch) // what was announced before this connection listened
	for {
		wctx, cancel := context.WithTimeout(ctx, listenCheck)
		_, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			wake(ch)
		case ctx.Err() != nil:
			return true, ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			if err := conn.Ping(ctx); err != nil {
				return true, err
			}
		default:
			return true, err
		}
	}
}

// wake sends on ch unless a receive is pending already.
func wake(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
