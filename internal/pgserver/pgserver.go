// Package pgserver runs a private, throw-away PostgreSQL server: Start
// runs initdb into a temporary folder and starts the server with initdb and
// pg_ctl from `pg_config --bindir` (Debian does not put them on PATH),
// trust authentication, a free port on 127.0.0.1 and a socket folder of
// its own; when the process runs as root, the server runs as the postgres
// OS user (initdb refuses root). Stop stops it and removes the folder;
// Crash and Restart stop it the way a crash does and start it again.
// Tests use it through internal/pgtest; `otafleet bench --store postgres`
// uses it for its server's store. A private server dies with the process
// that started it, however that process ends (see startWatchdog).
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
	"syscall"

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
	// settings are given with -c at every start (Start's).
	settings []string
	// watchdog stops the server and removes dir should this process end
	// without Stop (see startWatchdog); leash is the pipe it waits on.
	watchdog *exec.Cmd
	leash    *os.File

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
// settings ("name=value") are server settings given at every start, such
// as the tests' "fsync=off".
func Start(prefix string, settings ...string) (*Server, error) {
	out, err := exec.Command("pg_config", "--bindir").Output()
	if err != nil {
		return nil, fmt.Errorf("pgserver: PostgreSQL is not installed (pg_config --bindir: %v): install it (Debian: apt-get install postgresql)", err)
	}
	s := &Server{bindir: strings.TrimSpace(string(out)), settings: settings}
	for _, tool := range []string{"initdb", "pg_ctl"} {
		if _, err := os.Stat(filepath.Join(s.bindir, tool)); err != nil {
			return nil, fmt.Errorf("pgserver: %s is missing from %s: install the PostgreSQL server (Debian: apt-get install postgresql)", tool, s.bindir)
		}
	}
	if s.dir, err = os.MkdirTemp("", prefix); err != nil {
		return nil, err
	}
	if err := s.startWatchdog(); err != nil {
		_ = os.RemoveAll(s.dir)
		return nil, err
	}
	if err := s.init(); err != nil {
		s.stopWatchdog()
		_ = os.RemoveAll(s.dir)
		return nil, err
	}
	return s, nil
}

// watchdogScript waits until its standard input ends, then stops the
// server ("$@" is pg_ctl, behind runuser when root) and removes its folder.
const watchdogScript = `cat >/dev/null; "$@" -D "$PGSERVER_DATA" -m immediate -w stop >/dev/null 2>&1; rm -rf "$PGSERVER_DIR"`

// startWatchdog starts the process that stops the server and removes its
// folder when this process ends without Stop, however it ends (SIGKILL, a
// test binary killed by go test's timeout, a crash): a shell reading a
// pipe whose write end only this process holds, which the kernel closes
// when the process ends. The server itself is a daemon (pg_ctl start) and
// would outlive it. The watchdog runs in a process group of its own, so
// that a Ctrl-C sent to the terminal's group ends this process, not it.
func (s *Server) startWatchdog() error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	argv := append(append([]string{"-c", watchdogScript, "pgserver-watchdog"}, s.runAs...), filepath.Join(s.bindir, "pg_ctl"))
	cmd := exec.Command("sh", argv...)
	cmd.Env = append(os.Environ(), "PGSERVER_DATA="+s.data(), "PGSERVER_DIR="+s.dir)
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("pgserver: starting the watchdog: %w", err)
	}
	s.watchdog, s.leash = cmd, w
	return nil
}

// stopWatchdog ends the watchdog without letting it act (Stop does its work).
func (s *Server) stopWatchdog() {
	if s.watchdog == nil {
		return
	}
	_ = s.watchdog.Process.Kill()
	_ = s.watchdog.Wait()
	_ = s.leash.Close()
	s.watchdog, s.leash = nil, nil
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
	for _, kv := range s.settings {
		opts += " -c " + kv
	}
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
	s.stopWatchdog()
	var err error
	if _, statErr := os.Stat(filepath.Join(s.data(), "postmaster.pid")); statErr == nil {
		err = s.run("pg_ctl", "-D", s.data(), "-m", "fast", "-w", "stop")
	} // else not running (crashed, say): nothing to stop
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

// Freeze stops the private server's processes (the postmaster and its
// children, the backends) with SIGSTOP, as a hung server or a host that
// vanished without a reset would look to its clients: connections stay
// open and nothing answers. thaw (SIGCONT) lets them run again.
func (s *Server) Freeze() (thaw func() error, err error) {
	if s.external {
		return nil, errors.New("pgserver: cannot freeze an external server")
	}
	pids, err := s.processes()
	if err != nil {
		return nil, err
	}
	var stopped []int
	thaw = func() error {
		var errs []error
		for _, pid := range stopped {
			errs = append(errs, syscall.Kill(pid, syscall.SIGCONT))
		}
		return errors.Join(errs...)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			return nil, errors.Join(err, thaw())
		}
		stopped = append(stopped, pid)
	}
	return thaw, nil
}

// processes returns the postmaster's process ID (the first line of
// data/postmaster.pid) and its children's.
func (s *Server) processes() ([]int, error) {
	b, err := os.ReadFile(filepath.Join(s.data(), "postmaster.pid"))
	if err != nil {
		return nil, fmt.Errorf("pgserver: is the server running? %w", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pm, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return nil, fmt.Errorf("pgserver: postmaster.pid: %w", err)
	}
	pids := []int{pm}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pm) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}
