// Package minrate cuts HTTP transfers that are slower than a minimum rate,
// in place of a fixed read or write timeout that would cut large uploads,
// large downloads and long-lived server streams alike.
//
// Handler wraps an http.Handler. Every read of the request body and every
// write (and flush) of the response runs under a connection deadline set with
// http.ResponseController: within each window of I/O time, Rate×Window bytes
// must move, or the read or write fails with a timeout and the server drops
// the transfer (HTTP/1 closes the connection, HTTP/2 resets the stream). Only
// time spent inside a read, write or flush counts: a handler that waits (a
// server stream between two messages, a handler busy with what it read) is
// never cut, and between two calls the deadline is cleared. A peer that sends
// or takes nothing at all stays within the window of one call.
//
// The deadlines are absolute times taken from the Config's clock: a real
// clock (internal/clock.Real) in production, since the network stack
// compares them with the wall clock.
//
// A wrapped request is used by one goroutine at a time for reading and one for
// writing, as net/http allows.
package minrate

import (
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/otafleet/otafleet/internal/clock"
)

// Config is the minimum rate.
type Config struct {
	// Rate is the minimum in bytes per second; 0 turns the check off.
	Rate int64
	// Window is the I/O time over which Rate is measured: each Rate×Window
	// bytes must move within Window. Required when Rate > 0.
	Window time.Duration
	// Clock gives the deadlines' times; nil means clock.Real().
	Clock clock.Clock
}

// Validate reports a negative rate or a missing window.
func (c Config) Validate() error {
	switch {
	case c.Rate < 0:
		return errors.New("minrate: negative rate")
	case c.Rate > 0 && c.Window <= 0:
		return errors.New("minrate: a rate needs a positive window")
	}
	return nil
}

// quota is the bytes one window must move.
func (c Config) quota() int64 {
	q := c.Rate * int64(c.Window) / int64(time.Second)
	return max(q, 1)
}

// Handler returns next with the minimum rate applied to every request's body
// and response. With Rate 0 it returns next.
func Handler(cfg Config, next http.Handler) http.Handler {
	if cfg.Rate <= 0 {
		return next
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		// No deadline is left from a previous request of the connection.
		_ = rc.SetReadDeadline(time.Time{})
		_ = rc.SetWriteDeadline(time.Time{})
		mw := &writer{ResponseWriter: w, rc: rc, m: meter{cfg: cfg, quota: cfg.quota()}}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &body{ReadCloser: r.Body, rc: rc, m: meter{cfg: cfg, quota: cfg.quota()}}
		}
		next.ServeHTTP(mw, r)
		if r.ProtoMajor == 1 {
			// HTTP/1 flushes the response's buffered tail and discards an
			// unread body after the handler: bound them by one window too.
			end := cfg.Clock.Now().Add(cfg.Window)
			_ = rc.SetWriteDeadline(end)
			_ = rc.SetReadDeadline(end)
		}
	})
}

// meter accounts the bytes and the I/O time of the current window.
type meter struct {
	cfg   Config
	quota int64         // bytes per window
	moved int64         // bytes moved in the current window
	spent time.Duration // I/O time spent in the current window
}

// deadline is when the call starting at now must end.
func (m *meter) deadline(now time.Time) time.Time {
	return now.Add(m.cfg.Window - m.spent)
}

// room is how many bytes the next call may move within the window.
func (m *meter) room() int64 { return m.quota - m.moved }

// done accounts a call that moved n bytes between start and end.
func (m *meter) done(n int, start, end time.Time) {
	m.moved += int64(n)
	m.spent += end.Sub(start)
	if m.moved >= m.quota {
		m.moved, m.spent = 0, 0
	}
}

// body is a request body read under the minimum rate.
type body struct {
	io.ReadCloser
	rc *http.ResponseController
	m  meter
}

func (b *body) Read(p []byte) (int, error) {
	if room := b.m.room(); int64(len(p)) > room {
		p = p[:room]
	}
	start := b.m.cfg.Clock.Now()
	_ = b.rc.SetReadDeadline(b.m.deadline(start))
	n, err := b.ReadCloser.Read(p)
	_ = b.rc.SetReadDeadline(time.Time{})
	b.m.done(n, start, b.m.cfg.Clock.Now())
	return n, err
}

// writer is a response written under the minimum rate.
type writer struct {
	http.ResponseWriter
	rc *http.ResponseController
	m  meter
}

func (w *writer) Write(p []byte) (int, error) {
	var total int
	for len(p) > 0 {
		piece := p
		if room := w.m.room(); int64(len(piece)) > room {
			piece = piece[:room]
		}
		start := w.m.cfg.Clock.Now()
		_ = w.rc.SetWriteDeadline(w.m.deadline(start))
		n, err := w.ResponseWriter.Write(piece)
		_ = w.rc.SetWriteDeadline(time.Time{})
		w.m.done(n, start, w.m.cfg.Clock.Now())
		total += n
		if err != nil {
			return total, err
		}
		p = p[n:]
	}
	return total, nil
}

// FlushError flushes under the current window's deadline.
func (w *writer) FlushError() error {
	start := w.m.cfg.Clock.Now()
	_ = w.rc.SetWriteDeadline(w.m.deadline(start))
	err := w.rc.Flush()
	_ = w.rc.SetWriteDeadline(time.Time{})
	w.m.done(0, start, w.m.cfg.Clock.Now())
	return err
}

// Flush implements http.Flusher, for handlers that assert it.
func (w *writer) Flush() { _ = w.FlushError() }

// Unwrap lets http.ResponseController reach the connection.
func (w *writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }
