// Package migrations holds the numbered SQL files that build the schema,
// embedded into the binary and applied in order, each in its own
// transaction: SQLite's in this directory, PostgreSQL's twins (same numbers,
// same names) in postgres/.
package migrations
