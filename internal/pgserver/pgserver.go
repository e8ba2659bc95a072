// Package pgserver runs a private, throw-away PostgreSQL server: Start
// runs initdb into a temporary folder and starts the server with initdb and
// pg_ctl from `pg_config --bindir` (Debian does not put them on PATH),
// trust authentication, a free port on 127.0.0.1 and a socket folder of
// its own; when the process runs as root, the server runs as the postgres
// OS user (initdb refuses root). Stop stops it and removes the folder;
// Crash and Restart stop it the way a crash does and start it again.
// Tests use it through internal/pgtest; `otafleet bench --store postgres`
// uses it for its server's store.
package pgserver

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
	"sync/atomic"

	"github.com/jackc/pgx/v5"
)

// Server is a private PostgreSQL server, or an external one (see External).
type Server struct {
	dsn      string // of the maintenance database
	external bool

	// Private servers only.
	bindir string
	dir    string // temporary folder: data/, the socket, the log
	port   int
	runAs  []string // runuser prefix when root

	n atomic.Int64 // databases created
}

// External returns the server at dsn (a postgres:// URL of a maintenance
// database whose user may create databases); Stop, Crash and Restart do
// nothing to it or fail.
func External(dsn string) (*Server, error) {
	if u, err := url.Parse(dsn); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, errors.New("pgserver: the external server's DSN must be a postgres:// URL")
	}
	return &Server{dsn: dsn, external: true}, nil
}

// Start starts a private server; prefix names its temporary folder.
func Start(prefix string) (*Server, error) {
	out, err := exec.Command("pg_config", "--bindir").Output()
	if err != nil {
		return nil, fmt.Errorf("pgserver: PostgreSQL is not installed (pg_config --bindir: %v): install it (Debian: apt-get install postgresql)", err)
	}
	s := &Server{bindir: strings.TrimSpace(string(out))}
	for _, tool := range []string{"initdb", "pg_ctl"} {
		if _, err := os.Stat(filepath.Join(s.bindir, tool)); err != nil {
			return nil, fmt.Errorf("pgserver: %s is missing from %s: install the PostgreSQL server (Debian: apt-get install postgresql)", tool, s.bindir)
		}
	}
	if s.dir, err = os.MkdirTemp("", prefix); err != nil {
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
			return fmt.Errorf("pgserver: running as root, and initdb refuses root, but there is no postgres OS user to run the server as: %v", err)
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
		return fmt.Errorf("pgserver: %s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return nil
}

// Restart starts the private server (again, after Crash or Stop).
func (s *Server) Restart() error {
	if s.external {
		return errors.New("pgserver: cannot start an external server")
	}
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=200", s.port, s.dir)
	return s.run("pg_ctl", "-D", s.data(), "-l", filepath.Join(s.dir, "log"), "-w", "-o", opts, "start")
}

// Crash stops the private server the way a crash does (pg_ctl -m
// immediate): no checkpoint, recovery from the WAL at the next start.
func (s *Server) Crash() error {
	if s.external {
		return errors.New("pgserver: cannot crash an external server")
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

// PID returns the process ID of a private server's postmaster, from its
// postmaster.pid (it changes with Restart).
func (s *Server) PID() (int, error) {
	if s.external {
		return 0, errors.New("pgserver: an external server runs no process of ours")
	}
	b, err := os.ReadFile(filepath.Join(s.data(), "postmaster.pid"))
	if err != nil {
		return 0, fmt.Errorf("pgserver: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0, fmt.Errorf("pgserver: postmaster.pid: %w", err)
	}
	return pid, nil
}

// DSN returns the DSN of the server's maintenance database.
func (s *Server) DSN() string { return s.dsn }

// CreateDatabase creates database name as a copy of template ("" for
// template0, in the C collation) and returns its DSN.
func (s *Server) CreateDatabase(name, template string) (string, error) {
	if template == "" {
		template = "template0"
	}
	if err := s.create(name, template); err != nil {
		return "", err
	}
	return WithDatabase(s.dsn, name)
}

// NextName returns a new database name with prefix, unique in this process.
func (s *Server) NextName(prefix string) string {
	return fmt.Sprintf("%s_%d_%d", prefix, os.Getpid(), s.n.Add(1))
}

// create creates database name as a copy of template.
func (s *Server) create(name, template string) error {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, s.dsn)
	if err != nil {
		return fmt.Errorf("pgserver: connecting to %s: %w", s.dsn, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name+" LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE "+template); err != nil {
		return fmt.Errorf("pgserver: creating database %s: %w", name, err)
	}
	return nil
}

// WithDatabase returns the postgres:// URL dsn with its database set to
// name.
func WithDatabase(dsn, name string) (string, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return "", fmt.Errorf("pgserver: DSN %q: %w", dsn, err)
	}
	u.Path = "/" + name
	return u.String(), nil
}
