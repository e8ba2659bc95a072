//go:build linux

package bench

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat times; 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// cpuOf returns the CPU time (user + system) a live process used so far.
func cpuOf(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command field", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	// f[0] is field 3 (state): utime is field 14, stime field 15.
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad times %q %q", pid, f[11], f[12])
	}
	return time.Duration(u+st) * time.Second / clockTicks, nil
}

// treeCPUOf returns the CPU time (user + system) that a live process and
// its children used so far: its own, its reaped children's, and that of
// each live child with theirs (a PostgreSQL server: the postmaster, its
// backends and their exited predecessors).
func treeCPUOf(pid int) (time.Duration, error) {
	ticks := func(p int) (ppid int, own, children int64, err error) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			return 0, 0, 0, err
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			return 0, 0, 0, fmt.Errorf("/proc/%d/stat: no command field", p)
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 15 {
			return 0, 0, 0, fmt.Errorf("/proc/%d/stat: %d fields", p, len(f))
		}
		// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15,
		// cutime 16, cstime 17.
		var v [5]int64
		for k, j := range []int{1, 11, 12, 13, 14} {
			if v[k], err = strconv.ParseInt(f[j], 10, 64); err != nil {
				return 0, 0, 0, fmt.Errorf("/proc/%d/stat: field %d: %v", p, j+3, err)
			}
		}
		return int(v[0]), v[1] + v[2], v[3] + v[4], nil
	}
	_, own, children, err := ticks(pid)
	if err != nil {
		return 0, err
	}
	total := own + children
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil || p == pid {
			continue
		}
		ppid, own, children, err := ticks(p)
		if err != nil || ppid != pid {
			continue // gone meanwhile, or not a child
		}
		total += own + children
	}
	return time.Duration(total) * time.Second / clockTicks, nil
}

// memOf returns a live process's resident set size and its peak (VmRSS and
// VmHWM), in bytes.
func memOf(pid int) (rss, peak int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			rss = n << 10
		case "VmHWM":
			peak = n << 10
		}
	}
	if rss == 0 {
		return 0, 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
	}
	return rss, peak, nil
}

// usageOf returns an exited process's CPU time and peak RSS (bytes) from
// its rusage.
func usageOf(cmd *exec.Cmd) (time.Duration, int64) {
	ps := cmd.ProcessState
	if ps == nil {
		return 0, 0
	}
	var rss int64
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		rss = ru.Maxrss << 10 // kilobytes on Linux
	}
	return ps.UserTime() + ps.SystemTime(), rss
}

// cpuModel names the machine's processor.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
