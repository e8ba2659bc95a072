// Package pgtest gives tests a private, throw-away PostgreSQL server, one
// per test package: the first test that asks for it (Shared, NewDatabase)
// runs initdb into a temporary folder and starts the server (initdb and
// pg_ctl from `pg_config --bindir`, trust authentication, a free port on
// 127.0.0.1, a socket folder of its own); Main, called from the package's
// TestMain, stops it after the tests. Each test takes a fresh database
// from NewDatabase. When the process runs as root, the server runs as the
// postgres OS user (initdb refuses root). OTAFLEET_TEST_POSTGRES=DSN uses
// an existing server instead (its user must be allowed to create
// databases). A machine without PostgreSQL fails the tests that need it:
// it never skips them. It is for tests only.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
)

// EnvDSN names the environment variable that points the tests at an
// existing server.
const EnvDSN = "OTAFLEET_TEST_POSTGRES"

// Server is a PostgreSQL server for tests: private (started by Start) or
// external (EnvDSN).
type Server struct {
	dsn      string // of the maintenance database
	external bool

	// Private servers only.
	bindir string
	dir    string // temporary folder: data/, the socket, the log
	port   int
	runAs  []string // runuser prefix when root

	n atomic.Int64 // databases created

	templatesMu sync.Mutex
	templates   map[string]error // prepared templates, by name: the outcome of their setup
}

// The package's shared server: started by the first Shared (so that a
// test package of which few tests need PostgreSQL starts it only when one
// runs), stopped by Main.
var (
	sharedMu  sync.Mutex
	sharedRun bool // Main runs
	shared    *Server
	sharedErr error
)

// Main runs the tests, then stops the shared server if a test started it,
// and exits with the tests' status. Call it from TestMain.
func Main(m *testing.M) {
	sharedMu.Lock()
	sharedRun = true
	sharedMu.Unlock()
	code := m.Run()
	sharedMu.Lock()
	s := shared
	sharedMu.Unlock()
	if s != nil {
		if err := s.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// Shared returns the package's server, starting it on the first call; it
// fails t when the server cannot start (PostgreSQL missing, say) or when
// TestMain does not call Main (which stops it).
func Shared(t testing.TB) *Server {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if !sharedRun {
		t.Fatal("pgtest: the test package's TestMain must call pgtest.Main(m), which stops the server")
	}
	if shared == nil && sharedErr == nil {
		shared, sharedErr = Start()
	}
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return shared
}

// NewDatabase creates a fresh database on the shared server and returns
// its DSN (a postgres:// URL).
func NewDatabase(t testing.TB) string {
	t.Helper()
	return Shared(t).NewDatabase(t)
}

// Start starts a private server, or returns the external one of EnvDSN.
func Start() (*Server, error) {
	if dsn := os.Getenv(EnvDSN); dsn != "" {
		if _, err := url.Parse(dsn); err != nil || !strings.HasPrefix(dsn, "postgres") {
			return nil, fmt.Errorf("pgtest: %s must be a postgres:// URL, not %q", EnvDSN, dsn)
		}
		return &Server{dsn: dsn, external: true}, nil
	}
	out, err := exec.Command("pg_config", "--bindir").Output()
	if err != nil {
		return nil, fmt.Errorf("pgtest: PostgreSQL is not installed (pg_config --bindir: %v): install it (Debian: apt-get install postgresql) or set %s=postgres://... to use a running server", err, EnvDSN)
	}
	s := &Server{bindir: strings.TrimSpace(string(out))}
	for _, tool := range []string{"initdb", "pg_ctl"} {
		if _, err := os.Stat(filepath.Join(s.bindir, tool)); err != nil {
			return nil, fmt.Errorf("pgtest: %s is missing from %s: install the PostgreSQL server (Debian: apt-get install postgresql)", tool, s.bindir)
		}
	}
	if s.dir, err = os.MkdirTemp("", "otafleet-pgtest-"); err != nil {
		return nil, err
	}
	if err := s.init(); err != nil {
		_ = os.RemoveAll(s.dir)
		return nil, err
	}
	return s, nil
}

// init runs initdb (as the postgres user when root) and starts the server.
func (s *Server) init() error {
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("pgtest: running as root, and initdb refuses root, but there is no postgres OS user to run the server as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(s.dir, uid, gid); err != nil {
			return err
		}
		s.runAs = []string{"runuser", "-u", "postgres", "--"}
	}
	if err := s.run("initdb", "-D", s.data(), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	s.port = l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	s.dsn = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
	return s.Restart()
}

func (s *Server) data() string { return filepath.Join(s.dir, "data") }

// run runs a PostgreSQL tool of bindir, as the server's user.
func (s *Server) run(tool string, args ...string) error {
	argv := append(append(append([]string(nil), s.runAs...), filepath.Join(s.bindir, tool)), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = s.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgtest: %s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return nil
}

// Restart starts the private server (again, after Crash or Stop).
func (s *Server) Restart() error {
	if s.external {
		return errors.New("pgtest: cannot start an external server")
	}
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=200", s.port, s.dir)
	return s.run("pg_ctl", "-D", s.data(), "-l", filepath.Join(s.dir, "log"), "-w", "-o", opts, "start")
}

// Crash stops the private server the way a crash does (pg_ctl -m
// immediate): no checkpoint, recovery from the WAL at the next start.
func (s *Server) Crash() error {
	if s.external {
		return errors.New("pgtest: cannot crash an external server")
	}
	return s.run("pg_ctl", "-D", s.data(), "-m", "immediate", "-w", "stop")
}

// Stop stops a private server and removes its folder; for an external
// server it does nothing (its test databases stay).
func (s *Server) Stop() error {
	if s.external {
		return nil
	}
	err := s.run("pg_ctl", "-D", s.data(), "-m", "fast", "-w", "stop")
	return errors.Join(err, os.RemoveAll(s.dir))
}

// DSN returns the DSN of the server's maintenance database.
func (s *Server) DSN() string { return s.dsn }

// NewDatabase creates a fresh database and returns its DSN.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	return s.newDatabase(t, "template0")
}

// NewDatabaseFrom creates a fresh database, a copy of the template
// database that setup prepares (once per server and name: say, one that
// migrations made), and returns its DSN. A copy is cheaper than a new
// database prepared anew.
func (s *Server) NewDatabaseFrom(t testing.TB, template string, setup func(dsn string) error) string {
	t.Helper()
	s.templatesMu.Lock()
	err, done := s.templates[template]
	if !done {
		name := fmt.Sprintf("otafleet_template_%d_%s", os.Getpid(), template)
		err = s.create(name, "template0")
		if err == nil {
			var dsn string
			if dsn, err = WithDatabase(s.dsn, name); err == nil {
				err = setup(dsn)
			}
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
	return s.newDatabase(t, fmt.Sprintf("otafleet_template_%d_%s", os.Getpid(), template))
}

// newDatabase creates a fresh copy of template and returns its DSN.
func (s *Server) newDatabase(t testing.TB, template string) string {
	t.Helper()
	name := fmt.Sprintf("otafleet_test_%d_%d", os.Getpid(), s.n.Add(1))
	if err := s.create(name, template); err != nil {
		t.Fatal(err)
	}
	dsn, err := WithDatabase(s.dsn, name)
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}

// create creates database name as a copy of template.
func (s *Server) create(name, template string) error {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, s.dsn)
	if err != nil {
		return fmt.Errorf("pgtest: connecting to %s: %w", s.dsn, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name+" LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE "+template); err != nil {
		return fmt.Errorf("pgtest: creating database %s: %w", name, err)
	}
	return nil
}

// WithDatabase returns the postgres:// URL dsn with its database set to
// name.
func WithDatabase(dsn, name string) (string, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return "", fmt.Errorf("pgtest: DSN %q: %w", dsn, err)
	}
	u.Path = "/" + name
	return u.String(), nil
}
