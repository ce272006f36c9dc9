// Package session is the durable record of people and their sessions:
// users, authentication and application sessions, signing keys, the
// back-channel logout outbox, sign-in failure counts, the audit trail and,
// for replicas sharing a database, the change feed and leases, in SQLite
// (one host) or PostgreSQL (replicas on several hosts).
//
// Callers depend on the small interfaces they declare themselves; *SQLite
// and *Postgres satisfy all of them, and storetest holds the behaviour tests
// that both pass. The rules both must agree on (which audit events a write
// carries, how an End is applied with its condition and change feed rows,
// what a sign-in attempt counts, the order claimed deliveries come in) live
// in store.go and throttle.go; a backend supplies only its statements.
package session
