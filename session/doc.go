// Package session is the durable record of people and their sessions:
// users, authentication and application sessions, signing keys, the
// back-channel logout outbox, sign-in failure counts and the audit trail,
// in SQLite (one node) or PostgreSQL (replicas sharing a database).
//
// Callers depend on the small interfaces they declare themselves; *SQLite
// and *Postgres satisfy all of them, and storetest holds the behaviour tests
// that both pass. The rules both must agree on (which audit events a write
// carries, how an End is applied, what a sign-in attempt counts, the order
// claimed deliveries come in) live in store.go and throttle.go; a backend
// supplies only its statements.
package session
