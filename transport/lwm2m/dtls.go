package lwm2m

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	piondtls "github.com/pion/dtls/v3"
	coapnet "github.com/plgd-dev/go-coap/v3/net"

	"github.com/otafleet/otafleet/internal/clock"
)

// dtlsSuites are the DTLS 1.2 PSK cipher suites offered: spec 3.1's two
// (TLS_PSK_WITH_AES_128_CCM_8, TLS_PSK_WITH_AES_128_CBC_SHA256), and AES-GCM.
var dtlsSuites = []piondtls.CipherSuiteID{
	piondtls.TLS_PSK_WITH_AES_128_CCM_8,
	piondtls.TLS_PSK_WITH_AES_128_CBC_SHA256,
	piondtls.TLS_PSK_WITH_AES_128_GCM_SHA256,
}

// handshakeListener is the DTLS listener the server serves: each session
// it accepts reports a failed handshake (a wrong PSK, an unknown identity,
// no common cipher suite) to failures, which a device's operator would
// otherwise never see.
type handshakeListener struct {
	*coapnet.DTLSListener
	failures *handshakeFailures
}

// AcceptWithContext accepts a session whose handshake, which go-coap runs
// first, reports its failure.
func (l handshakeListener) AcceptWithContext(ctx context.Context) (net.Conn, error) {
	c, err := l.DTLSListener.AcceptWithContext(ctx)
	if dc, ok := c.(*piondtls.Conn); ok && err == nil {
		return &loggedHandshake{Conn: dc, failures: l.failures}, nil
	}
	return c, err
}

// loggedHandshake is a DTLS session whose failed handshake is reported.
type loggedHandshake struct {
	*piondtls.Conn
	failures *handshakeFailures
}

// HandshakeContext runs the handshake and reports its failure with the
// PSK identity the client presented, if it got that far; not the end of
// handshakes in flight when the server stops.
func (c *loggedHandshake) HandshakeContext(ctx context.Context) error {
	err := c.Conn.HandshakeContext(ctx)
	if err != nil && !errors.Is(err, context.Canceled) {
		st, _ := c.ConnectionState()
		c.failures.report(c.RemoteAddr().String(), string(st.IdentityHint), err)
	}
	return err
}

// Bounds of the failed-handshake log: at most handshakeLogBurst lines per
// handshakeLogWindow (the lines beyond are counted, and the count is told
// by the next line logged), identities cut to handshakeLogIdentity bytes.
const (
	handshakeLogBurst    = 10
	handshakeLogWindow   = time.Minute
	handshakeLogIdentity = 64
)

// handshakeFailures logs failed DTLS handshakes, rate-limited: a client
// that retries with a wrong key, or a scan, cannot flood the log.
type handshakeFailures struct {
	log *slog.Logger
	clk clock.Clock

	mu         sync.Mutex
	window     time.Time // start of the current window
	logged     int       // lines logged in it
	suppressed int       // lines not logged since the last one
}

func (h *handshakeFailures) report(peer, identity string, err error) {
	now := h.clk.Now()
	h.mu.Lock()
	if now.Sub(h.window) >= handshakeLogWindow {
		h.window, h.logged = now, 0
	}
	if h.logged >= handshakeLogBurst {
		h.suppressed++
		h.mu.Unlock()
		return
	}
	h.logged++
	suppressed := h.suppressed
	h.suppressed = 0
	h.mu.Unlock()
	if len(identity) > handshakeLogIdentity {
		identity = identity[:handshakeLogIdentity] + "..."
	}
	attrs := []slog.Attr{slog.String("peer", peer), slog.String("identity", identity), slog.String("error", err.Error())}
	if suppressed > 0 {
		attrs = append(attrs, slog.Int("not_logged_before", suppressed))
	}
	h.log.LogAttrs(context.Background(), slog.LevelWarn, "lwm2m: DTLS handshake failed", attrs...)
}
