// Package clocktest provides a fake [clock.Clock] for tests: time stands
// still until the test moves it with [Clock.Advance] or [Clock.AdvanceTo].
//
// A fake Clock never fires a timer on its own. Advance and AdvanceTo fire,
// synchronously in the caller's goroutine, every timer whose deadline is at
// or before the new time: in deadline order, ties in arming order (AfterFunc,
// NewTimer and Reset each arm). While a timer fires, Now returns exactly its
// deadline, and timers armed by its callback that fall due within the same
// Advance fire in turn. A timer armed with a zero or negative duration is due
// at once and fires on the next Advance, even Advance(0).
//
// A Clock is safe for concurrent use. Callbacks run without the Clock's lock
// held, so they may use the Clock (arm, stop or reset timers, even Advance).
// A NewTimer timer sends its deadline on a channel buffered to one value,
// without blocking; as with the time package since Go 1.23, Stop and Reset
// discard a value that was sent but not yet received. The exact-Now guarantee
// holds when one goroutine advances the clock at a time.
package clocktest

import (
	"container/heap"
	"fmt"
	"sync"
	"time"

	"github.com/otafleet/otafleet/internal/clock"
)

// Clock is a fake clock.Clock. Create one with New.
type Clock struct {
	mu     sync.Mutex
	now    time.Time
	seq    uint64    // arming counter, breaks deadline ties
	timers timerHeap // pending timers
}

var _ clock.Clock = (*Clock)(nil)

// New returns a fake Clock whose Now is start.
func New(start time.Time) *Clock {
	return &Clock{now: start}
}

// Now returns the fake current time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Since returns Now().Sub(t).
func (c *Clock) Since(t time.Time) time.Duration {
	return c.Now().Sub(t)
}

// AfterFunc arms a timer that calls f, in the goroutine that advances the
// clock, once the clock reaches Now()+d. The Timer's C returns nil.
func (c *Clock) AfterFunc(d time.Duration, f func()) clock.Timer {
	if f == nil {
		panic("clocktest: AfterFunc with a nil func")
	}
	t := &timer{c: c, fn: f, index: -1}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.arm(t, d)
	return t
}

// NewTimer arms a timer that sends its deadline on C once the clock reaches
// Now()+d.
func (c *Clock) NewTimer(d time.Duration) clock.Timer {
	t := &timer{c: c, ch: make(chan time.Time, 1), index: -1}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.arm(t, d)
	return t
}

// Advance moves the clock forward by d, firing every timer that falls due
// (see the package doc). It panics if d is negative: time does not go back.
func (c *Clock) Advance(d time.Duration) {
	if d < 0 {
		panic(fmt.Sprintf("clocktest: Advance(%v): negative duration", d))
	}
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	c.AdvanceTo(end)
}

// AdvanceTo moves the clock forward to end, firing every timer whose deadline
// is at or before end (see the package doc). It panics if end is before Now.
func (c *Clock) AdvanceTo(end time.Time) {
	c.mu.Lock()
	if end.Before(c.now) {
		now := c.now
		c.mu.Unlock()
		panic(fmt.Sprintf("clocktest: AdvanceTo(%v) is before Now %v", end, now))
	}
	for len(c.timers) > 0 && !c.timers[0].deadline.After(end) {
		t := heap.Pop(&c.timers).(*timer)
		if t.deadline.After(c.now) {
			c.now = t.deadline
		}
		if t.ch != nil {
			// Sent under the lock so that a concurrent Stop or Reset either
			// prevents the send or discards the value.
			select {
			case t.ch <- t.deadline:
			default:
			}
			continue
		}
		c.mu.Unlock()
		t.fn()
		c.mu.Lock()
	}
	if end.After(c.now) {
		c.now = end
	}
	c.mu.Unlock()
}

// Pending returns the number of armed timers that have not fired or been
// stopped.
func (c *Clock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// NextDeadline returns the deadline of the timer that fires next, and false
// if no timer is pending.
func (c *Clock) NextDeadline() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.timers) == 0 {
		return time.Time{}, false
	}
	return c.timers[0].deadline, true
}

// arm schedules t at now+d (never before now). c.mu must be held and t must
// not be pending.
func (c *Clock) arm(t *timer, d time.Duration) {
	t.deadline = c.now
	if d > 0 {
		t.deadline = c.now.Add(d)
	}
	c.seq++
	t.seq = c.seq
	heap.Push(&c.timers, t)
}

// timer is a fake clock.Timer: exactly one of fn and ch is set.
type timer struct {
	c        *Clock
	fn       func()
	ch       chan time.Time
	deadline time.Time
	seq      uint64
	index    int // position in c.timers, -1 when not pending
}

func (t *timer) C() <-chan time.Time { return t.ch }

func (t *timer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	return t.stopLocked()
}

func (t *timer) Reset(d time.Duration) bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.stopLocked()
	t.c.arm(t, d)
	return was
}

// stopLocked unschedules t and discards an unreceived value, reporting
// whether either happened. t.c.mu must be held.
func (t *timer) stopLocked() bool {
	stopped := false
	if t.index >= 0 {
		heap.Remove(&t.c.timers, t.index)
		stopped = true
	}
	if t.ch != nil {
		select {
		case <-t.ch:
			stopped = true
		default:
		}
	}
	return stopped
}

// timerHeap orders pending timers by deadline, then arming order.
type timerHeap []*timer

func (h timerHeap) Len() int { return len(h) }

func (h timerHeap) Less(i, j int) bool {
	if !h[i].deadline.Equal(h[j].deadline) {
		return h[i].deadline.Before(h[j].deadline)
	}
	return h[i].seq < h[j].seq
}

func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}

func (h *timerHeap) Push(x any) {
	t := x.(*timer)
	t.index = len(*h)
	*h = append(*h, t)
}

func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	t.index = -1
	*h = old[:len(old)-1]
	return t
}
