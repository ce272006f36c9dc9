package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/migrations"
	"github.com/idleguard/idleguard/oidc"
	"github.com/idleguard/idleguard/session"
)

// database is what the commands use of the store: everything the provider
// persists, and the user management of the CLI.
type database interface {
	oidc.Store
	CreateUser(ctx context.Context, u *session.User) error
	ListUsers(ctx context.Context) ([]*session.User, error)
	SetPassword(ctx context.Context, username, hash string) error
	DeleteUser(ctx context.Context, username string) error
	Close() error
}

var (
	_ database                = (*session.SQLite)(nil)
	_ database                = (*session.Postgres)(nil)
	_ activity.ChangeNotifier = (*session.Postgres)(nil)
)

// openDatabase opens, and migrates, the backend the database setting
// names: a postgres:// URL is PostgreSQL, anything else a SQLite file.
func openDatabase(ctx context.Context, setting string) (database, error) {
	if session.IsPostgresURL(setting) {
		s, err := session.OpenPostgres(ctx, setting)
		if err != nil {
			return nil, err
		}
		return s, nil
	}
	s, err := session.OpenSQLite(ctx, setting)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// dialect is the migrations dialect of a database setting.
func dialect(setting string) migrations.Dialect {
	if session.IsPostgresURL(setting) {
		return migrations.Postgres
	}
	return migrations.SQLite
}

// migrateCmd brings the schema up to date without serving, for deployments
// that migrate in a step of their own. On PostgreSQL it waits for (and then
// skips) a migration that a starting replica is running.
func migrateCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	configPath := fs.String("config", "", "configuration file")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return errors.New("usage: idleguard migrate [--config FILE]")
	}
	cfg, store, err := openStore(ctx, *configPath)
	if err != nil {
		return err
	}
	defer store.Close()
	v, err := migrations.Latest(dialect(cfg.Database))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "database %s is at schema version %d\n", session.RedactURL(cfg.Database), v)
	return nil
}
