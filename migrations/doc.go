// Package migrations holds the numbered SQL files that build the schema,
// embedded into the binary and applied in order, each in its own
// transaction: SQLite's in this directory, PostgreSQL's twins (same numbers,
// same names) in postgres/.
//
// To add a step, write NNNN_name.up.sql here and its twin in postgres/ with
// the same number and name (TestDialectsInStep fails until both exist).
// The twin keeps times as BIGINT Unix milliseconds, flags as BOOLEAN, blobs
// as BYTEA, generated ids as IDENTITY, and SQLite's scalar MAX/MIN become
// GREATEST/LEAST in the statements that use the new columns.
package migrations
