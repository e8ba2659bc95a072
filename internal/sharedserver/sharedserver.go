// Package sharedserver keeps one test server per test binary: started by
// the first test that needs it (so a package of which few tests need it
// starts it only when one runs), stopped when the tests end (TestMain
// calls Wrap). internal/pgtest and internal/etcdtest use it.
package sharedserver

import (
	"fmt"
	"os"
	"sync"
	"testing"
)

// Server is what a shared server must do when the tests end.
type Server interface{ Stop() error }

// Shared is one lazily started server of kind S.
type Shared[S Server] struct {
	name  string // the package, for the error when TestMain does not wrap
	start func() (S, error)

	mu      sync.Mutex
	wrapped bool // Wrap runs the tests
	started bool
	s       S
	err     error
}

// New makes a Shared whose server start starts; name is the package that
// offers it (its Main and Wrap are named in the error when they are missing).
func New[S Server](name string, start func() (S, error)) *Shared[S] {
	return &Shared[S]{name: name, start: start}
}

// Wrap runs run (the tests, or another package's wrapper around them),
// then stops the server if a test started it; it returns run's status, or
// 1 if stopping failed.
func (sh *Shared[S]) Wrap(run func() int) int {
	sh.mu.Lock()
	sh.wrapped = true
	sh.mu.Unlock()
	code := run()
	sh.mu.Lock()
	s, started := sh.s, sh.started && sh.err == nil
	sh.mu.Unlock()
	if started {
		if err := s.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// Get returns the server, starting it on the first call; it fails t when
// the server cannot start or when TestMain does not call Wrap.
func (sh *Shared[S]) Get(t testing.TB) S {
	t.Helper()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if !sh.wrapped {
		t.Fatalf("%s: the test package's TestMain must call %s.Main(m) or %s.Wrap, which stop the server", sh.name, sh.name, sh.name)
	}
	if !sh.started {
		sh.started = true
		sh.s, sh.err = sh.start()
	}
	if sh.err != nil {
		t.Fatal(sh.err)
	}
	return sh.s
}
