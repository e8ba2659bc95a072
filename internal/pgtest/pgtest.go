// Package pgtest gives tests a private, throw-away PostgreSQL server, one
// per test package: the first test that asks for it (Shared, NewDatabase)
// runs initdb into a temporary folder and starts the server (initdb and
// pg_ctl from `pg_config --bindir`, trust authentication, a free port on
// 127.0.0.1, a socket folder of its own); Main, called from the package's
// TestMain, stops it after the tests. Each test takes a fresh database
// from NewDatabase. When the process runs as root, the server runs as the
// postgres OS user (initdb refuses root; see internal/pgserver). A test
// binary that is killed (go test's timeout, SIGKILL) takes its servers
// with it: pgserver's watchdog stops them and removes their folders.
// OTAFLEET_TEST_POSTGRES=DSN uses
// an existing server instead (its user must be allowed to create
// databases). A machine without PostgreSQL fails the tests that need it:
// it never skips them. It is for tests only.
package pgtest

import (
	"flag"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/otafleet/otafleet/internal/pgserver"
	"github.com/otafleet/otafleet/internal/sharedserver"
)

// EnvDSN names the environment variable that points the tests at an
// existing server.
const EnvDSN = "OTAFLEET_TEST_POSTGRES"

// Server is the tests' server (see pgserver), with the templates that
// NewDatabaseFrom prepared.
type Server struct {
	*pgserver.Server

	templatesMu sync.Mutex
	templates   map[string]error // prepared templates, by name: the outcome of their setup
}

// settings are the private server's: fsync=off for tests, whose crash is
// the server's (pg_ctl -m immediate), never the machine's, and the WAL a
// commit wrote to the kernel survives that (flushing it to disk only made
// the tests slower); none when benchmarks run (-test.bench), whose synced
// appends compare with Pebble's fsynced ones.
func settings() []string {
	if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" {
		return nil
	}
	return []string{"fsync=off"}
}

// Start starts a private server, or returns the external one of EnvDSN.
func Start() (*Server, error) {
	if dsn := os.Getenv(EnvDSN); dsn != "" {
		s, err := pgserver.External(dsn)
		if err != nil {
			return nil, fmt.Errorf("pgtest: %s: %w", EnvDSN, err)
		}
		return &Server{Server: s}, nil
	}
	s, err := pgserver.Start("otafleet-pgtest-", settings()...)
	if err != nil {
		return nil, fmt.Errorf("%w (or set %s=postgres://... to use a running server)", err, EnvDSN)
	}
	return &Server{Server: s}, nil
}

// The package's shared server: started by the first Shared (so that a
// test package of which few tests need PostgreSQL starts it only when one
// runs), stopped by Main.
var shared = sharedserver.New("pgtest", Start)

// Main runs the tests, then stops the shared server if a test started it,
// and exits with the tests' status. Call it from TestMain.
func Main(m *testing.M) { os.Exit(Wrap(m.Run)) }

// Wrap is Main for a TestMain that stops other servers too: it runs run
// (the tests, or another package's wrapper around them), then stops the
// shared server; it returns run's status, or 1 if stopping failed.
func Wrap(run func() int) int { return shared.Wrap(run) }

// Shared returns the package's server, starting it on the first call; it
// fails t when the server cannot start or when TestMain does not call Main
// or Wrap (which stop it).
func Shared(t testing.TB) *Server {
	t.Helper()
	return shared.Get(t)
}

// NewDatabase creates a fresh database on the shared server and returns
// its DSN (a postgres:// URL).
func NewDatabase(t testing.TB) string {
	t.Helper()
	return Shared(t).NewDatabase(t)
}

// NewDatabase creates a fresh database and returns its DSN.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	dsn, err := s.CreateDatabase(s.NextName("otafleet_test"), "")
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}

// NewDatabaseFrom creates a fresh database, a copy of the template
// database that setup prepares (once per server and name: say, one that
// migrations made), and returns its DSN. A copy is cheaper than a new
// database prepared anew.
func (s *Server) NewDatabaseFrom(t testing.TB, template string, setup func(dsn string) error) string {
	t.Helper()
	name := fmt.Sprintf("otafleet_template_%d_%s", os.Getpid(), template)
	s.templatesMu.Lock()
	err, done := s.templates[template]
	if !done {
		var dsn string
		if dsn, err = s.CreateDatabase(name, ""); err == nil {
			err = setup(dsn)
		}
		if s.templates == nil {
			s.templates = map[string]error{}
		}
		s.templates[template] = err
	}
	s.templatesMu.Unlock()
	if err != nil {
		t.Fatalf("pgtest: preparing template %s: %v", template, err)
	}
	dsn, err := s.CreateDatabase(s.NextName("otafleet_test"), name)
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}
