//go:build unix

package main

import "syscall"

// raiseFileLimit lifts the open-file limit as far as allowed (a privileged
// process may also raise the hard limit) and returns the limit in force.
func raiseFileLimit() uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0
	}
	const want = 1 << 20
	if l.Max < want {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err == nil {
			return want
		}
	}
	if l.Cur < l.Max {
		n := syscall.Rlimit{Cur: l.Max, Max: l.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &n); err == nil {
			return n.Cur
		}
	}
	return l.Cur
}
