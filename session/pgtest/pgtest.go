// Package pgtest gives each test a fresh, empty PostgreSQL database on a
// real server.
//
// Unless IDLEGUARD_TEST_POSTGRES names a server (a URL whose user may
// create databases), the first test that asks starts a throwaway server from
// Debian's binaries (/usr/lib/postgresql/*/bin): initdb into a temporary
// directory, postgres on a free port of 127.0.0.1 and a unix socket in that
// directory, durability switched off for speed. One server serves the whole
// test binary; each test gets its own database, dropped when the test ends.
// A package that uses pgtest stops the server from its TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
// Without the binaries the tests are skipped, unless
// IDLEGUARD_REQUIRE_POSTGRES=1 (CI), which makes them fail instead.
// IDLEGUARD_POSTGRES_BIN names another directory of server binaries.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Environment variables that steer the harness.
const (
	EnvServer  = "IDLEGUARD_TEST_POSTGRES"    // URL of a server to use instead of starting one
	EnvRequire = "IDLEGUARD_REQUIRE_POSTGRES" // "1": fail, never skip, when PostgreSQL is unavailable
	EnvBin     = "IDLEGUARD_POSTGRES_BIN"     // directory of initdb and postgres (default: Debian's newest)
)

var (
	inMain  bool // Main runs the tests, and will stop the server
	once    sync.Once
	current *server
	errSkip error // why the tests are skipped (no server binaries)
	errFail error // why the server could not be started
)

// server is the PostgreSQL server the tests of this binary share.
type server struct {
	admin *pgxpool.Pool
	base  *url.URL // the server's URL; each database replaces its path
	dir   string   // temporary directory of a server we started, else ""
	bin   string   // of a server we started: its binaries, data directory, port and user
	data  string
	port  int
	cred  *syscall.Credential
	proc  *exec.Cmd
	// strategy makes CREATE DATABASE copy files (PostgreSQL 15+), a third
	// faster than logging every page for a database as small as ours.
	strategy string
	exited   chan struct{}
}

// Main runs the tests, then stops the server they started (if any).
func Main(m *testing.M) int {
	inMain = true
	code := m.Run()
	if current != nil {
		current.stop()
	}
	return code
}

// NewDatabase creates an empty database and returns its URL; the database is
// dropped when t ends (after the cleanups t registers later, such as closing
// a store opened on it).
func NewDatabase(t testing.TB) string {
	t.Helper()
	if !inMain {
		t.Fatal("pgtest: call pgtest.Main from the package's TestMain, so that the server stops after the tests")
	}
	once.Do(func() { current, errSkip, errFail = start() })
	switch {
	case errFail != nil:
		t.Fatalf("PostgreSQL: %v", errFail)
	case errSkip != nil:
		skipOrFail(t, errSkip)
	}
	return current.newDatabase(t)
}

// skipOrFail skips t because PostgreSQL is unavailable, or fails it under
// EnvRequire.
func skipOrFail(t testing.TB, why error) {
	t.Helper()
	if os.Getenv(EnvRequire) == "1" {
		t.Fatalf("PostgreSQL required (%s=1) but unavailable: %v", EnvRequire, why)
	}
	t.Skipf("PostgreSQL tests skipped: %v", why)
}

// newDatabase creates an empty database on s, dropped when t ends.
func (s *server) newDatabase(t testing.TB) string {
	t.Helper()
	name := "idleguard_test_" + randomHex(8)
	dsn, err := s.createDatabase(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := s.admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	return dsn
}

// createDatabase creates an empty database named name on s and returns its
// URL.
func (s *server) createDatabase(ctx context.Context, name string) (string, error) {
	if _, err := s.admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE template0"+s.strategy); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	u := *s.base
	u.Path = "/" + name
	return u.String(), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// start connects to EnvServer or starts a server of our own.
func start() (*server, error, error) {
	if dsn := os.Getenv(EnvServer); dsn != "" {
		s, err := connect(&server{}, dsn)
		return s, nil, err
	}
	bin, err := findBinaries()
	if err != nil {
		return nil, err, nil
	}
	s, err := launch(bin)
	return s, nil, err
}

func findBinaries() (string, error) {
	if dir := os.Getenv(EnvBin); dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvBin, dir, err)
		}
		return dir, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	var usable []string
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			usable = append(usable, d)
		}
	}
	if len(usable) == 0 {
		return "", fmt.Errorf("no server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql) and %s is unset", EnvServer)
	}
	sort.Slice(usable, func(i, j int) bool { return version(usable[i]) > version(usable[j]) })
	return usable[0], nil
}

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// launch runs initdb and postgres as an unprivileged user (PostgreSQL
// refuses to run as root) in a new temporary directory.
func launch(bin string) (*server, error) {
	dir, err := os.MkdirTemp("", "idleguard-pg-")
	if err != nil {
		return nil, err
	}
	s := &server{dir: dir, bin: bin, data: filepath.Join(dir, "data")}
	if s.cred, err = unprivileged(dir); err != nil {
		s.stop()
		return nil, err
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", s.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
	initdb.Dir, initdb.SysProcAttr = dir, sysProcAttr(s.cred)
	if out, err := initdb.CombinedOutput(); err != nil {
		s.stop()
		return nil, fmt.Errorf("initdb: %w: %s", err, out)
	}
	if s.port, err = freePort(); err != nil {
		s.stop()
		return nil, err
	}
	if err := s.run(); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// run starts postgres on the server's data directory and port, and waits
// until it answers.
func (s *server) run() error {
	logPath := filepath.Join(s.dir, "postgres.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o666)
	if err != nil {
		return err
	}
	defer logFile.Close()
	if s.cred != nil {
		_ = os.Chown(logPath, int(s.cred.Uid), int(s.cred.Gid))
	}
	s.proc = exec.Command(filepath.Join(s.bin, "postgres"), "-D", s.data, "-p", strconv.Itoa(s.port), "-k", s.dir,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=300", "-c", "shared_buffers=32MB", "-c", "log_min_messages=warning")
	s.proc.Dir, s.proc.SysProcAttr = s.dir, sysProcAttr(s.cred)
	s.proc.Stdout, s.proc.Stderr = logFile, logFile
	if err := s.proc.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	exited := make(chan struct{})
	s.exited = exited
	go func() { _ = s.proc.Wait(); close(exited) }()
	if _, err := connect(s, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)); err != nil {
		out, _ := os.ReadFile(logPath)
		return fmt.Errorf("%w; server log:\n%s", err, out)
	}
	return nil
}

// unprivileged returns the credential to run the server with: none when we
// are not root, else Debian's postgres user, who is given dir.
func unprivileged(dir string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, and PostgreSQL refuses root: need the postgres user (from Debian's postgresql package): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// connect opens the admin pool on dsn, waiting up to 30s for the server.
func connect(s *server, dsn string) (*server, error) {
	base, err := url.Parse(dsn)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvServer, err)
	}
	s.base = base
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = ping(ctx, s, dsn)
		cancel()
		if err == nil {
			return s, nil
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("postgres exited: %w", err)
		default:
		}
		if s.exited == nil || time.Now().After(deadline) {
			return nil, fmt.Errorf("connect to %s: %w", base.Redacted(), err)
		}
		time.Sleep(50 * time.Millisecond) // polling a starting server; no test waits on this
	}
}

func ping(ctx context.Context, s *server, dsn string) error {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return err
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return err
	}
	var version int
	if err := pool.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		pool.Close()
		return err
	}
	if version >= 150000 {
		s.strategy = " STRATEGY FILE_COPY"
	}
	s.admin = pool
	return nil
}

// stop shuts a server we started down and removes its directory.
func (s *server) stop() {
	if s.admin != nil {
		s.admin.Close()
		s.admin = nil
	}
	s.halt()
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
}

// halt stops the postgres process of a server we started (fast shutdown:
// SIGINT, which drops every connection), keeping its data.
func (s *server) halt() {
	if s.proc == nil || s.proc.Process == nil {
		return
	}
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.proc.Process.Signal(os.Interrupt)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.proc.Process.Kill()
		<-s.exited
	}
}

// Conn opens a plain connection to the database at dsn for a test that
// inspects rows directly; it is closed when t ends.
func Conn(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// Server is a PostgreSQL server of its own for one test (or one tool), which
// it may stop and start again: for tests of what the provider does while the
// database is away. Unlike the shared server of NewDatabase, stopping it
// disturbs no other test.
type Server struct{ s *server }

// Launch starts a throwaway server from Debian's binaries (or EnvBin) in a
// temporary directory; Close stops it and removes the directory.
func Launch() (*Server, error) {
	bin, err := findBinaries()
	if err != nil {
		return nil, err
	}
	s, err := launch(bin)
	if err != nil {
		return nil, err
	}
	return &Server{s: s}, nil
}

// NewServer launches a server for t, closed when t ends. Without server
// binaries t is skipped (failed under EnvRequire); EnvServer is no help
// here, since a test must not stop a server it does not own.
func NewServer(t testing.TB) *Server {
	t.Helper()
	bin, err := findBinaries()
	if err != nil {
		skipOrFail(t, err)
	}
	s, err := launch(bin)
	if err != nil {
		t.Fatalf("PostgreSQL: %v", err)
	}
	t.Cleanup(s.stop)
	return &Server{s: s}
}

// NewDatabase creates an empty database on the server, dropped when t ends
// (the server must be running then).
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	return s.s.newDatabase(t)
}

// CreateDatabase creates an empty database named name and returns its URL.
func (s *Server) CreateDatabase(ctx context.Context, name string) (string, error) {
	return s.s.createDatabase(ctx, name)
}

// Stop shuts the server down (fast shutdown: every connection is dropped,
// new ones are refused) and keeps its data.
func (s *Server) Stop() {
	s.s.admin.Close()
	s.s.halt()
}

// Start starts a stopped server again, on the same port with the same data,
// and waits until it answers.
func (s *Server) Start() error { return s.s.run() }

// Close stops the server and removes its files.
func (s *Server) Close() { s.s.stop() }
