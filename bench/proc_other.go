//go:build !linux

package bench

import (
	"errors"
	"os/exec"
	"time"
)

var errNotLinux = errors.New("bench reads process figures from /proc: it runs on Linux only")

func cpuOf(int) (time.Duration, error)         { return 0, errNotLinux }
func treeCPUOf(int) (time.Duration, error)     { return 0, errNotLinux }
func memOf(int) (int64, int64, error)          { return 0, 0, errNotLinux }
func usageOf(*exec.Cmd) (time.Duration, int64) { return 0, 0 }
func cpuModel() string                         { return "" }
