package lwm2m

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/otafleet/otafleet/internal/clock/clocktest"
)

// TestHandshakeFailuresBounded (issue 20, item 7): failed DTLS handshakes
// are logged at most handshakeLogBurst a window, the next line telling how
// many were not, with the identity cut short.
func TestHandshakeFailuresBounded(t *testing.T) {
	var out bytes.Buffer
	clk := clocktest.New(time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC))
	h := &handshakeFailures{log: slog.New(slog.NewTextHandler(&out, nil)), clk: clk}
	for range handshakeLogBurst + 5 {
		h.report("127.0.0.1:4000", strings.Repeat("x", 1000), errors.New("handshake timed out"))
	}
	if n := strings.Count(out.String(), "DTLS handshake failed"); n != handshakeLogBurst {
		t.Fatalf("%d lines in a window, want %d:\n%s", n, handshakeLogBurst, out.String())
	}
	if strings.Contains(out.String(), strings.Repeat("x", handshakeLogIdentity+1)) {
		t.Fatal("an identity logged whole")
	}
	out.Reset()
	clk.Advance(handshakeLogWindow)
	h.report("127.0.0.1:4001", "d3", errors.New("handshake timed out"))
	if got := out.String(); !strings.Contains(got, "identity=d3") || !strings.Contains(got, "peer=127.0.0.1:4001") || !strings.Contains(got, "not_logged_before=5") {
		t.Fatalf("the next window's line: %s", got)
	}
}
