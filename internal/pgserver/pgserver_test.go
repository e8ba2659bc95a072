package pgserver

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// envChild makes the test binary the child of TestDiesWithItsParent.
const envChild = "OTAFLEET_PGSERVER_TEST_CHILD"

// started is what the child reports of the server it started.
type started struct {
	Dir                 string
	Postmaster, Watcher int
}

// TestDiesWithItsParent: a process that started a private server is
// killed with SIGKILL (as go test's timeout or a crash ends a test
// binary): the server stops and its folder goes, without a Stop.
func TestDiesWithItsParent(t *testing.T) {
	if os.Getenv(envChild) != "" {
		child()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestDiesWithItsParent$")
	cmd.Env = append(os.Environ(), envChild+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	var st started
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "started "); ok {
			if err := json.Unmarshal([]byte(line), &st); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if st.Postmaster == 0 {
		_ = cmd.Process.Kill()
		t.Fatalf("the child started no server (%v)", cmd.Wait())
	}
	// Watch the postmaster and the watchdog (not our children) end.
	var fds []int
	for _, pid := range []int{st.Postmaster, st.Watcher} {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			t.Fatalf("pidfd of %d: %v", pid, err)
		}
		defer unix.Close(fd)
		fds = append(fds, fd)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	for i, fd := range fds {
		if err := awaitExit(fd, time.Minute); err != nil {
			t.Fatalf("%s (pid %d): %v", []string{"postmaster", "watchdog"}[i], []int{st.Postmaster, st.Watcher}[i], err)
		}
	}
	if _, err := os.Stat(st.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the server's folder %s after its parent died: %v", st.Dir, err)
	}
}

// awaitExit waits until the process of pidfd fd has ended, for at most d.
func awaitExit(fd int, d time.Duration) error {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(pfd, int(d.Milliseconds()))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("still running after %v", d)
		}
		return nil
	}
}

// child starts a server, reports it and waits to be killed.
func child() {
	s, err := Start("otafleet-pgserver-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pids, err := s.processes()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	b, _ := json.Marshal(started{Dir: s.dir, Postmaster: pids[0], Watcher: s.watchdog.Process.Pid})
	fmt.Printf("started %s\n", b)
	select {} // until killed
}
