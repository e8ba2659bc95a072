package mqtt

import (
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"

	"github.com/otafleet/otafleet/internal/clock"
)

// Defaults of the failed-login throttle.
const (
	// DefaultLoginFailuresPerDevice failed logins of one device are allowed
	// at once, then one more every LoginFailureWindow divided by it: five a
	// minute, which makes guessing a secret hopeless.
	DefaultLoginFailuresPerDevice = 5
	// DefaultLoginFailuresPerSource failed logins from one source address
	// are allowed at once, then as many again over LoginFailureWindow: many
	// devices may share an address behind a carrier's NAT.
	DefaultLoginFailuresPerSource = 100
	// LoginFailureWindow is the period over which the allowances refill.
	LoginFailureWindow = time.Minute
	// throttleEntries bounds each table of the throttle: the least recently
	// failed device or source is forgotten first.
	throttleEntries = 1 << 16
)

// loginThrottle counts failed logins per device and per source address in
// token buckets (one token per failure) kept in bounded LRU tables; a login
// whose device or source has no token left is refused before its password
// is checked. It is safe for concurrent use.
type loginThrottle struct {
	perDevice, perSource int
	devices              *lru.Cache[string, *rate.Limiter]
	sources              *lru.Cache[netip.Addr, *rate.Limiter]
}

// newLoginThrottle allows perDevice and perSource failures at once (<= 0:
// no throttle on that key) and refills them over LoginFailureWindow.
func newLoginThrottle(perDevice, perSource int) *loginThrottle {
	devices, _ := lru.New[string, *rate.Limiter](throttleEntries) // a positive size cannot fail
	sources, _ := lru.New[netip.Addr, *rate.Limiter](throttleEntries)
	return &loginThrottle{perDevice: perDevice, perSource: perSource, devices: devices, sources: sources}
}

// blocked reports whether a login of device from src is refused unchecked:
// one of them has used up its failures.
func (t *loginThrottle) blocked(device string, src netip.Addr, now time.Time) bool {
	if l, ok := t.sources.Peek(src); ok && l.TokensAt(now) < 1 {
		return true
	}
	if l, ok := t.devices.Peek(device); ok && l.TokensAt(now) < 1 {
		return true
	}
	return false
}

// failed counts a failed login from src, and against device unless it is
// "" (an unknown device is not tracked, so made-up IDs cannot fill the
// table).
func (t *loginThrottle) failed(device string, src netip.Addr, now time.Time) {
	if t.perSource > 0 {
		take(t.sources, src, t.perSource, now)
	}
	if t.perDevice > 0 && device != "" {
		take(t.devices, device, t.perDevice, now)
	}
}

func take[K comparable](c *lru.Cache[K, *rate.Limiter], k K, burst int, now time.Time) {
	l, ok := c.Get(k)
	if !ok {
		l = rate.NewLimiter(rate.Every(LoginFailureWindow/time.Duration(burst)), burst)
		if prev, found, _ := c.PeekOrAdd(k, l); found {
			l = prev
		}
	}
	l.AllowN(now, 1)
}

// limitedLog writes the broker's lines about refused devices at a bounded
// rate, so that a flood of bad connections or reports cannot flood the log;
// the next line written says how many were left out. It is safe for
// concurrent use.
type limitedLog struct {
	log        *slog.Logger
	clk        clock.Clock
	lim        *rate.Limiter
	suppressed atomic.Int64
}

// Rate of limitedLog: ten lines a second, bursts of fifty.
const (
	logRate  = 10
	logBurst = 50
)

func newLimitedLog(log *slog.Logger, clk clock.Clock) *limitedLog {
	return &limitedLog{log: log, clk: clk, lim: rate.NewLimiter(logRate, logBurst)}
}

// Info logs msg unless the rate is used up.
func (l *limitedLog) Info(msg string, args ...any) {
	if !l.lim.AllowN(l.clk.Now(), 1) {
		l.suppressed.Add(1)
		return
	}
	if n := l.suppressed.Swap(0); n > 0 {
		args = append(args, "suppressed_before", n)
	}
	l.log.Info(msg, args...)
}

// clip bounds a device-chosen string in a log line.
func clip(s string) string {
	const most = 128
	if len(s) <= most {
		return s
	}
	return s[:most] + "…"
}
