// Package etcdserver starts a private, throw-away etcd server: Debian's
// etcd (`etcd` on PATH, package etcd-server) on two free ports of
// 127.0.0.1 with a temporary data folder, waiting until it answers its
// health check. A process that dies however it dies takes its server with
// it: etcd runs under a watchdog shell that kills it and removes its folder
// when the pipe only this process holds closes (as internal/pgserver's
// does). `otafleet bench --nodes` and the tests (internal/etcdtest) use it.
package etcdserver

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/otafleet/otafleet/internal/clock"
)

// Server is a private etcd server.
type Server struct {
	url      string // client URL
	dir      string
	watchdog *exec.Cmd
	leash    *os.File
}

// URL is the server's client URL (http://127.0.0.1:PORT).
func (s *Server) URL() string { return s.url }

// PID is the process ID of the watchdog shell whose only child is etcd: its
// process tree's CPU is etcd's.
func (s *Server) PID() int { return s.watchdog.Process.Pid }

// watchdogScript starts etcd ("$@"), waits until its standard input ends
// (Stop closes it; so does the kernel when this process dies however it
// dies), then kills etcd and removes its folder.
const watchdogScript = `"$@" >"$ETCDSERVER_DIR/etcd.log" 2>&1 </dev/null & pid=$!; cat >/dev/null; kill -9 $pid; wait $pid; rm -rf "$ETCDSERVER_DIR"`

// Start starts a private server whose folder's name begins with prefix.
func Start(prefix string) (*Server, error) {
	bin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, errors.New("etcd is not installed (Debian: apt-get install etcd-server)")
	}
	dir, err := os.MkdirTemp("", prefix)
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
	cmd := exec.Command("sh", "-c", watchdogScript, "etcdserver-watchdog", bin,
		"--name", "otafleet", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "otafleet="+peer)
	cmd.Env = append(os.Environ(), "ETCDSERVER_DIR="+dir)
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("starting etcd: %w", err)
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
	return fmt.Errorf("etcd at %s did not become healthy in %v: %v", s.url, limit, last)
}

// Stop stops the server and removes its folder.
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
