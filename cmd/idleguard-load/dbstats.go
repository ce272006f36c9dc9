package main

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/idleguard/idleguard/session"
)

// dbWrites are PostgreSQL's write counters, read beside the provider: write
// transactions (transaction ids handed out: PostgreSQL assigns one only to
// a transaction that writes) and WAL bytes. Both count the whole server,
// exactly and at once (unlike pg_stat_database, whose counters backends
// report up to seconds late): on a server of its own (-database postgres)
// they are the provider's writes.
type dbWrites struct {
	ok       bool
	xids     int64
	walBytes int64
	at       time.Time     // of a reading
	elapsed  time.Duration // of a difference
}

// readWrites reads the counters, or returns ok=false for SQLite or when the
// server cannot tell.
func readWrites(ctx context.Context, database string) dbWrites {
	if !session.IsPostgresURL(database) {
		return dbWrites{}
	}
	conn, err := pgx.Connect(ctx, database)
	if err != nil {
		return dbWrites{}
	}
	defer conn.Close(ctx)
	var w dbWrites
	// txid_current takes an id itself: one write transaction per reading,
	// subtracted in since.
	err = conn.QueryRow(ctx, `SELECT txid_current(), pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint`).Scan(&w.xids, &w.walBytes)
	w.ok, w.at = err == nil, time.Now()
	return w
}

// since is the difference of two readings.
func (w dbWrites) since(before dbWrites) dbWrites {
	if !w.ok || !before.ok {
		return dbWrites{}
	}
	return dbWrites{ok: true, xids: w.xids - before.xids - 1, walBytes: w.walBytes - before.walBytes, elapsed: w.at.Sub(before.at)}
}
