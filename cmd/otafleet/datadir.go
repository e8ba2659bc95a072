package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// One `otafleet serve` at a time owns a data folder. It holds DIR/serve.lock
// with the operating system's file lock (pebble's portable one: fcntl on Unix,
// an exclusive open on Windows), which dies with the process, even on
// SIGKILL, and writes its process ID to DIR/serve.pid beside it. A second
// serve of the same folder fails at once with errDataDirInUse and the first
// one's pid, before it touches anything in the folder. (The store keeps its
// own lock, store/LOCK, for any other program that opens it.)
const (
	lockFile = "serve.lock"
	pidFile  = "serve.pid"
)

// errDataDirInUse: another otafleet serve holds the data folder.
var errDataDirInUse = errors.New("data folder in use by another otafleet serve")

// dataDirLock is a held data-folder lock.
type dataDirLock struct {
	dir  string
	lock io.Closer
}

// lockDataDir takes the lock of the data folder dir (which must exist) and
// writes this process's ID to DIR/serve.pid.
func lockDataDir(dir string) (*dataDirLock, error) {
	l, err := vfs.Default.Lock(filepath.Join(dir, lockFile))
	var open *os.PathError
	switch {
	case errors.As(err, &open): // the file could not be opened: not a lock held
		return nil, fmt.Errorf("data folder: %w", err)
	case err != nil:
		who := "" // the holder may not have written its pid yet
		if pid, perr := holderPID(dir); perr == nil {
			who = fmt.Sprintf(", pid %d", pid)
		}
		return nil, fmt.Errorf("%w%s (%s; stop that server first)", errDataDirInUse, who, dir)
	}
	if err := writeFileAtomic(filepath.Join(dir, pidFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		l.Close()
		return nil, err
	}
	return &dataDirLock{dir: dir, lock: l}, nil
}

// holderPID reads the process ID of the serve that holds the lock.
func holderPID(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s holds no process ID", pidFile)
	}
	return pid, nil
}

// release removes DIR/serve.pid (a stopped server leaves no pid to signal)
// and then drops the lock.
func (l *dataDirLock) release() error {
	err := os.Remove(filepath.Join(l.dir, pidFile))
	return errors.Join(err, l.lock.Close())
}
