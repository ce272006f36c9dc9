// Package migrations holds the numbered SQL files that build the SQLite schema,
// embedded into the binary and applied in order, each in its own transaction.
package migrations
