// Package clock is otafleet's one door to the wall clock. Code that needs the
// current time, a timeout or a deadline takes a [Clock] as a dependency instead
// of calling the time package, so that tests can drive hours of protocol time
// in milliseconds with the fake in package clocktest.
//
// Only this package (and its subpackages) and cmd/ may read the wall clock or
// sleep; the lint tests in internal/lint enforce this. Pure state machines take
// no Clock at all: time arrives inside each input.
//
// [Real] is safe for concurrent use, and so are the timers it returns. Its
// timers follow the time package (Go 1.23 and later semantics): after Stop or
// Reset returns, no stale value is received from a timer's channel.
package clock

import "time"

// Clock tells the time and arms timers. Implementations are safe for
// concurrent use.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// Since returns the time elapsed since t; it is Now().Sub(t).
	Since(t time.Time) time.Duration
	// AfterFunc arms a timer that calls f once, in its own goroutine for the
	// real clock, after d has elapsed. The returned Timer's C is nil.
	AfterFunc(d time.Duration, f func()) Timer
	// NewTimer arms a timer that sends the current time on its channel C
	// once, after d has elapsed.
	NewTimer(d time.Duration) Timer
}

// Timer is a single-shot timer armed by a Clock.
type Timer interface {
	// C returns the channel on which a NewTimer timer delivers its time. It
	// returns nil for an AfterFunc timer.
	C() <-chan time.Time
	// Stop prevents the timer from firing. It reports whether the call
	// stopped the timer, false if it had already fired or been stopped. For
	// an AfterFunc timer, Stop does not wait for a running f to return.
	Stop() bool
	// Reset re-arms the timer to fire after d, as if newly armed. It reports
	// whether the timer was still pending.
	Reset(d time.Duration) bool
}

// Real returns the Clock of the time package: the wall clock.
func Real() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time                  { return time.Now() }
func (realClock) Since(t time.Time) time.Duration { return time.Since(t) }

func (realClock) AfterFunc(d time.Duration, f func()) Timer {
	return realTimer{time.AfterFunc(d, f)}
}

func (realClock) NewTimer(d time.Duration) Timer {
	return realTimer{time.NewTimer(d)}
}

// realTimer adapts *time.Timer, whose C field is nil for AfterFunc timers.
type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time        { return r.t.C }
func (r realTimer) Stop() bool                 { return r.t.Stop() }
func (r realTimer) Reset(d time.Duration) bool { return r.t.Reset(d) }
