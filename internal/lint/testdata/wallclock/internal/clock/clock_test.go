package clock

import (
	"testing"
	"time"
)

func TestClock(t *testing.T) {
	_ = time.Now()
	time.Sleep(time.Millisecond)
	<-time.After(time.Millisecond)
	_ = time.Since(time.Time{})
}
