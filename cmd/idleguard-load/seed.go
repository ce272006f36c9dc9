package main

import (
	"context"
	"fmt"
	"time"

	"github.com/idleguard/idleguard/session"
	"github.com/idleguard/idleguard/session/seed"
)

// loadPassword is every synthetic user's password.
const loadPassword = "load-test-password"

func userName(i int) string { return fmt.Sprintf("load-%07d", i) }

// userStore is what seeding needs of either backend.
type userStore interface {
	CreateUser(ctx context.Context, u *session.User) error
	Close() error
}

// openUsers opens (and migrates) the database setting: a postgres:// URL
// or a SQLite file.
func openUsers(ctx context.Context, database string) (userStore, error) {
	if session.IsPostgresURL(database) {
		return session.OpenPostgres(ctx, database)
	}
	return session.OpenSQLite(ctx, database)
}

// seedUsers creates the database (migrating it) and n users with a cheap
// argon2id hash (t=1, 8 KiB), so that signing n people in through the
// login form costs little CPU. The hash records its parameters;
// verification honours them.
func seedUsers(ctx context.Context, database string, n int) error {
	store, err := openUsers(ctx, database)
	if err != nil {
		return err
	}
	defer store.Close()
	now := time.Now()
	for i := range n {
		hash, err := session.HashPasswordWithParams(loadPassword, 1, 8, 1)
		if err != nil {
			return err
		}
		name := userName(i)
		if err := store.CreateUser(ctx, &session.User{Username: name, PasswordHash: hash, Name: name,
			Email: name + "@load.invalid", EmailVerified: true, CreatedAt: now}); err != nil {
			return fmt.Errorf("seed user %s: %w", name, err)
		}
	}
	return nil
}

// seedSessionsSQL inserts n idle-but-live sessions of clientID before the
// provider starts: last active within the last 4 hours, with an 8h idle
// limit, so their deadlines are 4 to 8 hours ahead for the whole run. No
// token exists for them, so the run never touches them: they stay out of the
// provider's memory and only weigh on the database (indexes, size, sweeps).
func seedSessionsSQL(ctx context.Context, dbPath string, n int, clientID string, now time.Time) error {
	return seed.Sessions(ctx, dbPath, n, seed.Options{ClientID: clientID, Now: now, LastActiveWithin: 4 * time.Hour,
		IdleLimit: 8 * time.Hour, MaxLifetime: 24 * time.Hour, Note: "seeded by idleguard-load"})
}
