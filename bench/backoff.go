package bench

import (
	"context"
	"time"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/internal/clock"
)

// Transient reports whether err is an API call's slow or missing answer
// that asking again may cure: deadline_exceeded (a busy server's request
// timed out) or unavailable (the server is restarting or overloaded). A
// real answer (not_found, permission_denied, invalid_argument, ...) is not.
func Transient(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeDeadlineExceeded, connect.CodeUnavailable:
		return true
	}
	return false
}

// Backoff paces the retries of an API call that failed transiently, so
// that a poll or a watch rides out a slow server instead of aborting. The
// delays double from Min to Max; after Tries failures in a row without a
// success (Reset) it gives up. The zero value takes the defaults below.
// A Backoff is used by one goroutine.
type Backoff struct {
	Clock    clock.Clock   // nil: the real clock
	Min, Max time.Duration // 0: 250 ms and 5 s
	Tries    int           // 0: 8 (about 20 s of delays)
	failed   int
}

// Retry decides on err, a failed call's error: it waits out the next delay
// and returns nil when the call should be made again, or returns err when
// it is not transient or the tries are used up, and ctx's error when ctx
// ends during the wait.
func (b *Backoff) Retry(ctx context.Context, err error) error {
	if !Transient(err) || ctx.Err() != nil {
		return err
	}
	tries, d, most := b.Tries, b.Min, b.Max
	if tries <= 0 {
		tries = 8
	}
	if d <= 0 {
		d = 250 * time.Millisecond
	}
	if most <= 0 {
		most = 5 * time.Second
	}
	if b.failed >= tries {
		return err
	}
	for range b.failed {
		if d *= 2; d >= most {
			d = most
			break
		}
	}
	b.failed++
	clk := b.Clock
	if clk == nil {
		clk = clock.Real()
	}
	t := clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}

// Reset starts the count of failures in a row again, after a success.
func (b *Backoff) Reset() { b.failed = 0 }
