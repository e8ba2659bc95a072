package clock_test

import (
	"testing"
	"time"

	"github.com/otafleet/otafleet/internal/clock"
)

// These tests use only zero or negative durations, so they never wait for the
// wall clock to move.

func TestRealNowAndSince(t *testing.T) {
	c := clock.Real()
	before := time.Now()
	now := c.Now()
	if now.Before(before) {
		t.Fatalf("Real().Now() = %v, before time.Now() %v", now, before)
	}
	if d := c.Since(before); d < 0 {
		t.Fatalf("Real().Since(earlier) = %v, want >= 0", d)
	}
}

func TestRealNewTimer(t *testing.T) {
	tm := clock.Real().NewTimer(0)
	if tm.C() == nil {
		t.Fatal("NewTimer timer has a nil channel")
	}
	<-tm.C() // fires at once; a hang here is a bug the test timeout reports
	if tm.Stop() {
		t.Error("Stop after the timer fired = true, want false")
	}
	if tm.Reset(-time.Second) {
		t.Error("Reset of a fired timer = true, want false")
	}
	<-tm.C()
}

func TestRealAfterFunc(t *testing.T) {
	done := make(chan struct{})
	tm := clock.Real().AfterFunc(0, func() { close(done) })
	if tm.C() != nil {
		t.Error("AfterFunc timer has a non-nil channel")
	}
	<-done
	if tm.Stop() {
		t.Error("Stop after the callback ran = true, want false")
	}
}

func TestRealStopBeforeFiring(t *testing.T) {
	tm := clock.Real().AfterFunc(time.Hour, func() { t.Error("stopped timer fired") })
	if !tm.Stop() {
		t.Error("Stop of a pending timer = false, want true")
	}
	if tm.Stop() {
		t.Error("second Stop = true, want false")
	}
}
