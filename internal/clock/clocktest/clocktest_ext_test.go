package clocktest_test

import (
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
)

var start = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// recorder collects "name@offset" for each callback, offset being the fake
// Now at the time the callback ran.
type recorder struct {
	c   *clocktest.Clock
	got []string
}

func (r *recorder) fn(name string) func() {
	return func() { r.got = append(r.got, fmt.Sprintf("%s@%v", name, r.c.Now().Sub(start))) }
}

func (r *recorder) check(t *testing.T, want ...string) {
	t.Helper()
	if len(want) == 0 {
		want = nil
	}
	if !reflect.DeepEqual(r.got, want) {
		t.Fatalf("fired %q, want %q", r.got, want)
	}
	r.got = nil
}

func newRecorder(t *testing.T) (*clocktest.Clock, *recorder) {
	t.Helper()
	c := clocktest.New(start)
	return c, &recorder{c: c}
}

func TestImplementsClock(t *testing.T) {
	var _ clock.Clock = clocktest.New(start)
}

func TestNowStandsStill(t *testing.T) {
	c := clocktest.New(start)
	if !c.Now().Equal(start) {
		t.Fatalf("Now = %v, want %v", c.Now(), start)
	}
	c.Advance(90 * time.Second)
	if got := c.Since(start); got != 90*time.Second {
		t.Fatalf("Since(start) = %v, want 1m30s", got)
	}
	c.AdvanceTo(start.Add(time.Hour))
	if !c.Now().Equal(start.Add(time.Hour)) {
		t.Fatalf("Now = %v after AdvanceTo, want %v", c.Now(), start.Add(time.Hour))
	}
}

func TestDeadlineOrder(t *testing.T) {
	c, r := newRecorder(t)
	c.AfterFunc(3*time.Minute, r.fn("c"))
	c.AfterFunc(time.Minute, r.fn("a"))
	c.AfterFunc(2*time.Minute, r.fn("b"))
	c.AfterFunc(time.Hour, r.fn("late"))
	if n := c.Pending(); n != 4 {
		t.Fatalf("Pending = %d, want 4", n)
	}
	if d, ok := c.NextDeadline(); !ok || !d.Equal(start.Add(time.Minute)) {
		t.Fatalf("NextDeadline = %v, %v; want %v, true", d, ok, start.Add(time.Minute))
	}

	c.Advance(59 * time.Second)
	r.check(t)
	c.Advance(2 * time.Minute) // to 2m59s
	r.check(t, "a@1m0s", "b@2m0s")
	c.Advance(time.Second) // exactly the deadline of c
	r.check(t, "c@3m0s")
	if got := c.Since(start); got != 3*time.Minute {
		t.Fatalf("Now after Advance = +%v, want +3m0s", got)
	}
	if n := c.Pending(); n != 1 {
		t.Fatalf("Pending = %d, want 1", n)
	}
	c.Advance(24 * time.Hour)
	r.check(t, "late@1h0m0s")
	if _, ok := c.NextDeadline(); ok {
		t.Fatal("NextDeadline reports a timer after all fired")
	}
}

func TestTiesFireInArmingOrder(t *testing.T) {
	c, r := newRecorder(t)
	c.AfterFunc(time.Minute, r.fn("first"))
	ch := c.NewTimer(time.Minute)
	c.AfterFunc(time.Minute, func() {
		select {
		case <-ch.C():
			r.got = append(r.got, "chan-already-sent")
		default:
			r.got = append(r.got, "chan-not-sent")
		}
	})
	second := c.AfterFunc(time.Minute, r.fn("second"))
	c.AfterFunc(time.Minute, r.fn("third"))
	// Reset arms anew: "second" moves behind "third" at the same deadline.
	second.Reset(time.Minute)
	c.Advance(time.Minute)
	r.check(t, "first@1m0s", "chan-already-sent", "third@1m0s", "second@1m0s")
}

func TestZeroAndNegativeDurationsFireOnNextAdvance(t *testing.T) {
	c, r := newRecorder(t)
	c.Advance(time.Second)
	c.AfterFunc(0, r.fn("zero"))
	c.AfterFunc(-time.Hour, r.fn("negative"))
	r.check(t) // nothing fires outside Advance
	if d, ok := c.NextDeadline(); !ok || !d.Equal(start.Add(time.Second)) {
		t.Fatalf("NextDeadline = %v, %v; want Now", d, ok)
	}
	c.Advance(0)
	r.check(t, "zero@1s", "negative@1s")
}

func TestStop(t *testing.T) {
	c, r := newRecorder(t)
	tm := c.AfterFunc(time.Minute, r.fn("stopped"))
	c.AfterFunc(2*time.Minute, r.fn("kept"))
	if !tm.Stop() {
		t.Fatal("Stop of a pending timer = false, want true")
	}
	if tm.Stop() {
		t.Fatal("second Stop = true, want false")
	}
	if n := c.Pending(); n != 1 {
		t.Fatalf("Pending = %d after Stop, want 1", n)
	}
	if tm.C() != nil {
		t.Fatal("AfterFunc timer has a non-nil C")
	}
	c.Advance(time.Hour)
	r.check(t, "kept@2m0s")

	fired := c.AfterFunc(time.Second, r.fn("fired"))
	c.Advance(time.Second)
	r.check(t, "fired@1h0m1s")
	if fired.Stop() {
		t.Fatal("Stop after firing = true, want false")
	}
}

func TestReset(t *testing.T) {
	c, r := newRecorder(t)
	tm := c.AfterFunc(time.Minute, r.fn("x"))
	if !tm.Reset(5 * time.Minute) {
		t.Fatal("Reset of a pending timer = false, want true")
	}
	c.Advance(4 * time.Minute)
	r.check(t)
	if !tm.Reset(30 * time.Second) { // from now, not from arming
		t.Fatal("Reset of a pending timer = false, want true")
	}
	c.Advance(30 * time.Second)
	r.check(t, "x@4m30s")
	if tm.Reset(time.Minute) {
		t.Fatal("Reset of a fired timer = true, want false")
	}
	c.Advance(time.Minute)
	r.check(t, "x@5m30s")

	tm.Stop()
	if tm.Reset(time.Second) {
		t.Fatal("Reset of a stopped timer = true, want false")
	}
	if n := c.Pending(); n != 1 {
		t.Fatalf("Pending = %d after Reset, want 1", n)
	}
	c.Advance(time.Second)
	r.check(t, "x@5m31s")
}

func TestNewTimer(t *testing.T) {
	c := clocktest.New(start)
	tm := c.NewTimer(time.Minute)
	if tm.C() == nil {
		t.Fatal("NewTimer has a nil C")
	}
	c.Advance(59 * time.Second)
	select {
	case v := <-tm.C():
		t.Fatalf("received %v before the deadline", v)
	default:
	}
	c.Advance(time.Hour) // past the deadline: the value is the deadline
	select {
	case v := <-tm.C():
		if !v.Equal(start.Add(time.Minute)) {
			t.Fatalf("received %v, want the deadline %v", v, start.Add(time.Minute))
		}
	default:
		t.Fatal("nothing received after the deadline")
	}
	if tm.Stop() {
		t.Fatal("Stop after the value was received = true, want false")
	}
}

func TestNewTimerStopAndResetDiscardUnreceivedValue(t *testing.T) {
	c := clocktest.New(start)
	tm := c.NewTimer(time.Second)
	c.Advance(time.Second) // sent, not received
	if !tm.Stop() {
		t.Fatal("Stop with an unreceived value = false, want true")
	}
	select {
	case v := <-tm.C():
		t.Fatalf("received stale %v after Stop", v)
	default:
	}

	tm.Reset(time.Second)
	c.Advance(time.Second) // sent, not received
	if !tm.Reset(time.Minute) {
		t.Fatal("Reset with an unreceived value = false, want true")
	}
	c.Advance(time.Second) // nothing due: the channel stays empty
	select {
	case v := <-tm.C():
		t.Fatalf("received stale %v after Reset", v)
	default:
	}
	c.Advance(time.Minute)
	if v := <-tm.C(); !v.Equal(start.Add(2*time.Second + time.Minute)) {
		t.Fatalf("received %v, want %v", v, start.Add(2*time.Second+time.Minute))
	}
}

func TestNewTimerNeverBlocksAdvance(t *testing.T) {
	c := clocktest.New(start)
	tm := c.NewTimer(time.Second)
	c.Advance(time.Second)
	tm.Reset(0) // discards the first value, then a second fire must not block
	c.Advance(0)
	tm.Reset(0)
	c.Advance(0)
	if v := <-tm.C(); !v.Equal(start.Add(time.Second)) {
		t.Fatalf("received %v, want %v", v, start.Add(time.Second))
	}
}

func TestTimersArmedByCallbacks(t *testing.T) {
	c, r := newRecorder(t)
	c.AfterFunc(time.Minute, func() {
		r.fn("outer")()
		c.AfterFunc(30*time.Second, r.fn("inner-in-window"))
		c.AfterFunc(0, r.fn("inner-now"))
		c.AfterFunc(time.Hour, r.fn("inner-later"))
	})
	c.AfterFunc(80*time.Second, r.fn("sibling"))
	c.Advance(2 * time.Minute)
	r.check(t, "outer@1m0s", "inner-now@1m0s", "sibling@1m20s", "inner-in-window@1m30s")
	if got := c.Since(start); got != 2*time.Minute {
		t.Fatalf("Now = +%v, want +2m0s", got)
	}
	if n := c.Pending(); n != 1 {
		t.Fatalf("Pending = %d, want 1 (inner-later)", n)
	}
	c.Advance(time.Hour)
	r.check(t, "inner-later@1h1m0s")
}

func TestCallbackMayStopAndResetOthers(t *testing.T) {
	c, r := newRecorder(t)
	var victim, moved clock.Timer
	c.AfterFunc(time.Second, func() {
		r.fn("killer")()
		victim.Stop()
		moved.Reset(time.Hour)
	})
	victim = c.AfterFunc(2*time.Second, r.fn("victim"))
	moved = c.AfterFunc(3*time.Second, r.fn("moved"))
	c.Advance(time.Minute)
	r.check(t, "killer@1s")
	c.Advance(time.Hour)
	r.check(t, "moved@1h0m1s")
}

func TestRearmingTimer(t *testing.T) {
	// A self-rearming timer fires once per period, even across one Advance.
	c, r := newRecorder(t)
	var tick clock.Timer
	n := 0
	tick = c.AfterFunc(time.Minute, func() {
		n++
		if n < 3 {
			tick.Reset(time.Minute)
		}
		r.fn("tick")()
	})
	c.Advance(time.Hour)
	r.check(t, "tick@1m0s", "tick@2m0s", "tick@3m0s")
}

// Test24Hours drives a day of protocol deadlines (the spec's defaults: 24 h
// online wait, 3 min version report, 60 min download) for many devices plus a
// one-second heartbeat, advancing in one-minute steps.
func Test24Hours(t *testing.T) {
	c := clocktest.New(start)
	const devices = 200
	fired := map[string]int{}
	var last time.Time
	record := func(name string, want time.Time) func() {
		return func() {
			now := c.Now()
			if !now.Equal(want) {
				t.Errorf("%s fired at %v, want %v", name, now, want)
			}
			if now.Before(last) {
				t.Errorf("%s fired at %v, after a timer at %v", name, now, last)
			}
			last = now
			fired[name]++
		}
	}
	for i := range devices {
		offset := time.Duration(i) * time.Second
		for _, d := range []struct {
			name string
			d    time.Duration
		}{{"online", 24 * time.Hour}, {"version", 3 * time.Minute}, {"download", 60 * time.Minute}} {
			c.AfterFunc(offset+d.d, record(d.name, start.Add(offset+d.d)))
		}
	}
	// A heartbeat that re-arms itself every second.
	var beat clock.Timer
	beats := 0
	beat = c.AfterFunc(time.Second, func() {
		beats++
		if want := start.Add(time.Duration(beats) * time.Second); !c.Now().Equal(want) {
			t.Fatalf("beat %d at %v, want %v", beats, c.Now(), want)
		}
		beat.Reset(time.Second)
	})

	end := start.Add(24*time.Hour + devices*time.Second)
	for c.Now().Before(end) {
		c.Advance(time.Minute)
	}
	for _, name := range []string{"online", "version", "download"} {
		if fired[name] != devices {
			t.Errorf("%s fired %d times, want %d", name, fired[name], devices)
		}
	}
	if want := int(c.Since(start) / time.Second); beats != want {
		t.Errorf("heartbeat fired %d times, want %d", beats, want)
	}
	if n := c.Pending(); n != 1 {
		t.Errorf("Pending = %d, want 1 (the heartbeat)", n)
	}
}

func TestAdvancePanicsGoingBack(t *testing.T) {
	c := clocktest.New(start)
	c.Advance(time.Hour)
	for name, f := range map[string]func(){
		"Advance(-1ns)":         func() { c.Advance(-1) },
		"AdvanceTo(before Now)": func() { c.AdvanceTo(start) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s did not panic", name)
				}
			}()
			f()
		}()
	}
	if got := c.Since(start); got != time.Hour {
		t.Errorf("Now moved to +%v after a refused move, want +1h0m0s", got)
	}
	// The clock still works after a refused move.
	done := false
	c.AfterFunc(0, func() { done = true })
	c.AdvanceTo(c.Now())
	if !done {
		t.Error("AdvanceTo(Now) did not fire a due timer")
	}
}

// TestConcurrentUse exercises the Clock from many goroutines at once; it
// checks for data races under -race and for lost or duplicated firings.
func TestConcurrentUse(t *testing.T) {
	c := clocktest.New(start)
	const workers, perWorker = 8, 200
	var (
		mu      sync.Mutex
		fires   int
		rearmed int // Resets of timers that had fired: each fires once more
		wg      sync.WaitGroup
	)
	armed := make(chan struct{})
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				d := time.Duration(w*perWorker+i) * time.Millisecond
				tm := c.AfterFunc(d, func() {
					mu.Lock()
					fires++
					mu.Unlock()
				})
				ch := c.NewTimer(d)
				switch i % 3 {
				case 0:
					if !tm.Reset(d) {
						mu.Lock()
						rearmed++
						mu.Unlock()
					}
				case 1:
					ch.Stop()
				}
				_ = c.Now()
				_ = c.Pending()
				_, _ = c.NextDeadline()
			}
		}()
	}
	// Advance concurrently with the arming goroutines.
	go func() {
		for range 100 {
			c.Advance(10 * time.Millisecond)
		}
		close(armed)
	}()
	wg.Wait()
	<-armed
	c.Advance(time.Hour)
	if want := workers*perWorker + rearmed; fires != want {
		t.Fatalf("%d callbacks ran, want %d", fires, want)
	}
	if n := c.Pending(); n != 0 {
		t.Fatalf("Pending = %d after advancing past every deadline, want 0", n)
	}
}
