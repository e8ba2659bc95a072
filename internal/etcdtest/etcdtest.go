// Package etcdtest gives tests a private, throw-away etcd server, one per
// test package: the first test that asks for it (Shared) starts Debian's
// etcd (`etcd` on PATH, package etcd-server) on two free ports of
// 127.0.0.1 with a temporary data folder (internal/etcdserver, which
// `otafleet bench --nodes` uses too) and waits until it answers its
// health check; Main, called from the package's TestMain, stops it after
// the tests. A test binary that is killed (go test's timeout, SIGKILL)
// takes its server with it: etcd runs under a watchdog shell that kills it
// and removes its folder when the pipe only this process holds closes
// (as internal/pgserver's does). OTAFLEET_TEST_ETCD=URL (a client URL,
// http://HOST:PORT) uses an existing server instead. A machine without etcd
// fails the tests that need it: it never skips them. Tests separate their
// clusters by name (NewCluster). It is for tests only.
package etcdtest

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"github.com/otafleet/otafleet/internal/etcdserver"
	"github.com/otafleet/otafleet/internal/sharedserver"
)

// EnvURL names the environment variable that points the tests at an
// existing server.
const EnvURL = "OTAFLEET_TEST_ETCD"

// Server is a private etcd server, or an external one.
type Server struct {
	url string // client URL
	srv *etcdserver.Server
	n   atomic.Int64
}

// URL is the server's client URL (http://127.0.0.1:PORT).
func (s *Server) URL() string { return s.url }

// NewCluster returns a cluster name no other test of this process uses.
func (s *Server) NewCluster(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), s.n.Add(1))
}

// Start starts a private server (internal/etcdserver), or returns the
// external one of EnvURL.
func Start() (*Server, error) {
	if u := os.Getenv(EnvURL); u != "" {
		return &Server{url: u}, nil
	}
	srv, err := etcdserver.Start("otafleet-etcdtest-")
	if err != nil {
		return nil, fmt.Errorf("etcdtest: %w, or set %s=http://HOST:PORT to use a running server", err, EnvURL)
	}
	return &Server{url: srv.URL(), srv: srv}, nil
}

// Stop stops a private server and removes its folder (nothing for an
// external one).
func (s *Server) Stop() error {
	if s.srv == nil {
		return nil
	}
	err := s.srv.Stop()
	s.srv = nil
	return err
}

// The package's shared server (see pgtest: started by the first Shared,
// stopped by Main).
var shared = sharedserver.New("etcdtest", Start)

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
