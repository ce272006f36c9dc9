package session

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/crypto/argon2"
)

// Argon2id parameters (RFC 9106 second recommended option, with 64 MiB).
const (
	argonTime    = 3
	argonMemory  = 64 * 1024
	argonThreads = 2
	argonKeyLen  = 32
)

// HashPassword returns an argon2id hash in PHC string format.
func HashPassword(password string) (string, error) {
	return HashPasswordWithParams(password, argonTime, argonMemory, argonThreads)
}

// HashPasswordWithParams is HashPassword with explicit argon2id cost. The
// parameters are recorded in the hash, so verification needs no setting.
//
// WARNING: anything below the defaults weakens stored passwords; lower costs
// are for load tests' synthetic users only.
func HashPasswordWithParams(password string, time, memoryKiB uint32, threads uint8) (string, error) {
	if password == "" {
		return "", errors.New("password is empty")
	}
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key := argon2.IDKey([]byte(password), salt, time, memoryKiB, threads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, memoryKiB, time, threads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key)), nil
}

// dummyHash is verified against when a user does not exist, so that the
// response time does not tell which usernames exist. It is made on first
// use: computing it at start-up cost 64 MiB of peak memory for nothing.
var dummyHash = sync.OnceValue(func() string {
	h, _ := HashPassword("idleguard-dummy-password")
	return h
})

// VerifyPassword reports whether password matches an argon2id PHC hash. An
// empty hash (unknown user) still costs one argon2id computation.
//
// Each call holds the hash's memory cost (64 MiB by default) while it runs:
// a server bounds how many run at once, and how many wait (the provider's
// login limiter does).
func VerifyPassword(hash, password string) bool {
	if hash == "" {
		hash = dummyHash()
		password += "\x00never"
	}
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false
	}
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil {
		return false
	}
	salt, err := base64.RawStdEncoding.DecodeString(parts[4])
	if err != nil {
		return false
	}
	want, err := base64.RawStdEncoding.DecodeString(parts[5])
	if err != nil || len(want) == 0 {
		return false
	}
	got := argon2.IDKey([]byte(password), salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}
