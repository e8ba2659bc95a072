// Package etcdtest gives tests a private, throw-away etcd server, one per
// test package: the first test that asks for it (Shared) starts Debian's
// etcd (`etcd` on PATH, package etcd-server) on two free ports of
// 127.0.0.1 with a temporary data folder and waits until it answers its
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
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/otafleet/otafleet/internal/clock"
)

// EnvURL names the environment variable that points the tests at an
// existing server.
const EnvURL = "OTAFLEET_TEST_ETCD"

// Server is a private etcd server, or an external one.
type Server struct {
	url string // client URL

	dir      string
	watchdog *exec.Cmd
	leash    *os.File
	n        atomic.Int64
}

// URL is the server's client URL (http://127.0.0.1:PORT).
func (s *Server) URL() string { return s.url }

// NewCluster returns a cluster name no other test of this process uses.
func (s *Server) NewCluster(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), s.n.Add(1))
}

// watchdogScript starts etcd ("$@"), waits until its standard input ends
// (Stop closes it; so does the kernel when this process dies however it
// dies), then kills etcd and removes its folder.
const watchdogScript = `"$@" >"$ETCDTEST_DIR/etcd.log" 2>&1 </dev/null & pid=$!; cat >/dev/null; kill -9 $pid; wait $pid; rm -rf "$ETCDTEST_DIR"`

// Start starts a private server, or returns the external one of EnvURL.
func Start() (*Server, error) {
	if u := os.Getenv(EnvURL); u != "" {
		return &Server{url: u}, nil
	}
	bin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, fmt.Errorf("etcdtest: etcd is not installed (Debian: apt-get install etcd-server), or set %s=http://HOST:PORT to use a running server", EnvURL)
	}
	dir, err := os.MkdirTemp("", "otafleet-etcdtest-")
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(2)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	client := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	r, w, err := os.Pipe()
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	defer r.Close()
	cmd := exec.Command("sh", "-c", watchdogScript, "etcdtest-watchdog", bin,
		"--name", "etcdtest", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "etcdtest="+peer)
	cmd.Env = append(os.Environ(), "ETCDTEST_DIR="+dir)
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("etcdtest: starting etcd: %w", err)
	}
	s := &Server{url: client, dir: dir, watchdog: cmd, leash: w}
	if err := s.awaitHealthy(30 * time.Second); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "etcd.log"))
		_ = s.Stop()
		return nil, fmt.Errorf("%w; its log:\n%s", err, log)
	}
	return s, nil
}

// awaitHealthy polls etcd's /health until it reports healthy.
func (s *Server) awaitHealthy(limit time.Duration) error {
	c := &http.Client{Timeout: time.Second}
	real := clock.Real()
	start := real.Now()
	var last error
	for real.Since(start) < limit {
		resp, err := c.Get(s.url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		last = err
		t := real.NewTimer(50 * time.Millisecond)
		<-t.C()
	}
	return fmt.Errorf("etcdtest: etcd at %s did not become healthy in %v: %v", s.url, limit, last)
}

// Stop stops a private server and removes its folder (nothing for an
// external one).
func (s *Server) Stop() error {
	if s.watchdog == nil {
		return nil
	}
	_ = s.leash.Close()
	err := s.watchdog.Wait()
	s.watchdog, s.leash = nil, nil
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		err = nil // etcd's exit after kill -9 is the script's status
	}
	return err
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// The package's shared server (see pgtest: started by the first Shared,
// stopped by Main).
var (
	sharedMu  sync.Mutex
	sharedRun bool
	shared    *Server
	sharedErr error
)

// Main runs the tests, then stops the shared server if a test started it,
// and exits with the tests' status. Call it from TestMain (after or inside
// pgtest.Main's run: see Wrap).
func Main(m *testing.M) { os.Exit(Wrap(m.Run)) }

// Wrap runs run (the tests, or another package's Main-like wrapper), then
// stops the shared server; it returns run's status, or 1 if stopping
// failed.
func Wrap(run func() int) int {
	sharedMu.Lock()
	sharedRun = true
	sharedMu.Unlock()
	code := run()
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
	return code
}

// Shared returns the package's server, starting it on the first call; it
// fails t when the server cannot start or when TestMain does not call Main
// or Wrap (which stop it).
func Shared(t testing.TB) *Server {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if !sharedRun {
		t.Fatal("etcdtest: the test package's TestMain must call etcdtest.Main(m) or etcdtest.Wrap, which stop the server")
	}
	if shared == nil && sharedErr == nil {
		shared, sharedErr = Start()
	}
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return shared
}
