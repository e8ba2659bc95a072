package lwm2m_test

import (
	"bytes"
	"runtime"
	"testing"
	"time"

	"github.com/otafleet/otafleet/messages"
)

// ourGoroutines counts the goroutines running a function of this package
// (go-coap's own per-peer goroutines call into it only while they handle a
// message).
func ourGoroutines() int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("otafleet/otafleet/transport/lwm2m.")) {
			n++
		}
	}
	return n
}

// TestIdleRegistrationsHoldNoGoroutine (issue 21, idle memory): a registered
// device's queued requests run on a goroutine that exists only while there
// are some, so an idle fleet holds none of the server's goroutines per
// device, before and after an upgrade ran its requests.
func TestIdleRegistrationsHoldNoGoroutine(t *testing.T) {
	s := newStack(t)
	base := ourGoroutines()
	const n = 30
	s.devices("q", n, false, nil)
	if got := ourGoroutines(); got > base {
		t.Fatalf("%d registered idle devices: %d goroutines of the server, %d before they registered", n, got, base)
	}
	s.createTask("fota", s.fw, ids("q", n))
	if v := s.waitTask("fota"); v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS {
		t.Fatalf("task ended %v: %v", v.Status, outcomes(v))
	}
	waitFor(t, "the request goroutines to end", 10*time.Second, func() bool { return ourGoroutines() <= base })
}
