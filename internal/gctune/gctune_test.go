package gctune

import (
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"testing"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		name        string
		base        int
		live, floor uint64
		want        int
	}{
		{"no floor", 100, 30 * mib, 0, 100},
		{"live unknown", 100, 0, 256 * mib, 100},
		{"floor below what base allows", 100, 200 * mib, 256 * mib, 100},
		{"floor at what base allows", 100, 128 * mib, 256 * mib, 100},
		{"floor above", 100, 32 * mib, 256 * mib, 700},
		{"capped", 100, 1 * mib, 256 * mib, MaxPercent},
		{"another base", 50, 100 * mib, 200 * mib, 100},
		{"GOGC off stays off", -1, 32 * mib, 256 * mib, -1},
	} {
		if got := Percent(c.base, c.live, c.floor); got != c.want {
			t.Errorf("%s: Percent(%d, %d, %d) = %d, want %d", c.name, c.base, c.live, c.floor, got, c.want)
		}
	}
}

// TestTunerFollowsFloor: after a collection the Tuner raises GOGC while the
// floor is set, and sets it back to the base once the floor is 0, and at
// Stop.
func TestTunerFollowsFloor(t *testing.T) {
	old := debug.SetGCPercent(100)
	defer debug.SetGCPercent(old)
	var floor atomic.Uint64
	floor.Store(1 << 40) // far above any live heap: MaxPercent
	tu := Start(100, floor.Load)
	defer tu.Stop()
	waitPercent(t, tu, MaxPercent)
	if got := debug.SetGCPercent(MaxPercent); got != MaxPercent {
		t.Fatalf("GOGC is %d, want %d", got, MaxPercent)
	}
	floor.Store(0)
	waitPercent(t, tu, 100)
	floor.Store(1 << 40)
	waitPercent(t, tu, MaxPercent)
	tu.Stop()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("GOGC after Stop is %d, want the base, 100", got)
	}
}

// waitPercent collects until the Tuner has set want (its cleanup runs on
// the runtime's goroutine after a collection).
func waitPercent(t *testing.T, tu *Tuner, want int) {
	t.Helper()
	for range 10000 {
		if tu.Percent() == want {
			return
		}
		runtime.GC()
		runtime.Gosched()
	}
	t.Fatalf("GOGC %d after 10,000 collections, want %d", tu.Percent(), want)
}
