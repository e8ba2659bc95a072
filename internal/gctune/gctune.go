// Package gctune gives the garbage collector a heap floor while the process
// has work that allocates fast: after each collection it sets GOGC so that
// the next one starts once the heap reaches the larger of the floor and what
// GOGC 100 (or the percent given) would allow. A small live heap that
// allocates fast (a node upgrading a thousand devices holds a few tens of
// MiB and allocates tens of MiB a second) is otherwise collected several
// times a second, and the collector's marking and assists were 8-12% of
// the engine's CPU per upgrade. When the floor is 0 (no work) GOGC goes back
// to the base percent, so an idle process keeps its lean heap.
//
// The memory limit (GOMEMLIMIT, debug.SetMemoryLimit) still holds: the
// collector runs when the heap nears it, whatever GOGC says.
//
// A Tuner runs its adjustment on the runtime's cleanup goroutine once per
// collection; it takes no lock of the caller's, and floor must be cheap and
// safe to call from any goroutine.
package gctune

import (
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
)

// DefaultFloor is the floor otafleet serve keeps while devices have jobs
// (--gc-heap-floor): at a thousand devices upgrading it takes most of the
// collector's share of an upgrade's CPU, for up to this much more memory.
const DefaultFloor = 256 << 20

// While returns a floor function for Start: floor bytes while busy reports
// true, else 0.
func While(floor uint64, busy func() bool) func() uint64 {
	return func() uint64 {
		if busy() {
			return floor
		}
		return 0
	}
}

// MaxPercent bounds the GOGC a Tuner sets, whatever the floor: with a tiny
// live heap the floor would otherwise ask for an absurd percent.
const MaxPercent = 2000

// Tuner adjusts GOGC after each collection; see the package documentation.
type Tuner struct {
	base    int
	floor   func() uint64
	stopped atomic.Bool
	percent atomic.Int64 // the GOGC last set

	mu      sync.Mutex // orders tune and Stop; guards samples
	samples []metrics.Sample
}

// Start starts a Tuner with base percent base (GOGC's value when there is
// no floor; 100 is Go's default) and floor, which returns the heap size in
// bytes below which the collector should not start (0: no floor). It sets
// GOGC to base at once.
func Start(base int, floor func() uint64) *Tuner {
	t := &Tuner{base: base, floor: floor, samples: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	t.percent.Store(int64(base))
	debug.SetGCPercent(base)
	t.arm()
	return t
}

// Stop ends the adjustments and sets GOGC back to the base percent.
func (t *Tuner) Stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped.Swap(true) {
		return
	}
	t.percent.Store(int64(t.base))
	debug.SetGCPercent(t.base)
}

// Percent returns the GOGC the Tuner set last.
func (t *Tuner) Percent() int { return int(t.percent.Load()) }

// sentinel is the object whose cleanup tells a collection happened: it
// holds a pointer so that it is not a tiny allocation (the runtime may never
// run the cleanups of those).
type sentinel struct {
	_ *byte
	_ [2]uint64
}

// arm registers a cleanup of a new object: it runs after the collection
// that finds the object unreachable, which is the next one.
func (t *Tuner) arm() {
	runtime.AddCleanup(new(sentinel), func(t *Tuner) {
		if t.stopped.Load() {
			return
		}
		t.tune()
		t.arm()
	}, t)
}

// tune sets GOGC for the live heap the last collection left.
func (t *Tuner) tune() {
	floor := t.floor()
	t.mu.Lock() // against Stop, which must have the last word
	defer t.mu.Unlock()
	if t.stopped.Load() {
		return
	}
	metrics.Read(t.samples)
	live := uint64(0)
	if v := t.samples[0].Value; v.Kind() == metrics.KindUint64 {
		live = v.Uint64()
	}
	p := Percent(t.base, live, floor)
	if old := t.percent.Load(); p == int(old) || (old > int64(t.base) && p > t.base && math.Abs(float64(p)-float64(old)) < float64(old)/10) {
		return // unchanged, or within 10% while above the base: the heap's lock is not worth taking
	}
	t.percent.Store(int64(p))
	debug.SetGCPercent(p)
}

// Percent is the GOGC that starts the next collection at the larger of
// floor and what base allows above a live heap of live bytes, at most
// MaxPercent; base when floor is 0 or live unknown (0).
func Percent(base int, live, floor uint64) int {
	if floor == 0 || live == 0 || base < 0 {
		return base
	}
	if floor <= live+live*uint64(base)/100 {
		return base
	}
	p := (floor - live) * 100 / live
	return int(min(p, MaxPercent))
}
