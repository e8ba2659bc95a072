package lwm2msim

import (
	"context"
	"sync"
	"time"
)

// Event kinds, the Kind of an [Event] (see Config.OnEvent).
const (
	// EventCommand: an upgrade command arrived: a Package URI (not empty)
	// written to /5/0/1 and answered 2.04, or a PCP 0x14 new version
	// notification, whatever the device then does with it (a repeated one
	// that continues the download, a refusal).
	EventCommand = "command"
	// EventDownloadStart: the device sends its first block request (FOTA,
	// once per Package URI write that starts a download) or its first 0x15
	// segment request (PCP, once per package), after ThinkTime.
	EventDownloadStart = "download-start"
	// EventDownloadDone: every byte of the package arrived (and, with
	// BytesPerSecond, the pace allows it to be done), before the device
	// checks it; Bytes is the package's size.
	EventDownloadDone = "download-done"
	// EventInstalled: the device took on the new version (Version).
	EventInstalled = "installed"
	// EventFailed: the device reported a failure code, Code: an Update
	// Result other than 0 and 1 (FOTA), or a non-zero result code in a
	// 0x14 or 0x17 response, a 0x16 download result or a 0x18 upgrade
	// result (PCP). An EventReported with the same code follows.
	EventFailed = "failed"
	// EventReported: the device made the final result of a command known
	// to the server, Code: FOTA when it sets the final Update Result (1
	// for success; with RebootOnUpdate once it registered again), PCP when
	// it sends the final frame (a refusing 0x14 or 0x17 response, a failed
	// 0x16, or the 0x18, whose Code is 0 for success; with RebootOnUpdate
	// or an unobserved /19/0/0 once the 0x18 could be sent).
	EventReported = "reported"
)

// Event is something the device did, for Config.OnEvent.
type Event struct {
	// Kind is one of the Event* constants.
	Kind string
	// Upgrade is "firmware" (FOTA, object 5) or "software" (PCP, object
	// 19).
	Upgrade string
	// Version is the version the upgrade brings: PCP, the version of the
	// 0x14 notification, on every event; FOTA, on EventInstalled and the
	// EventReported of a success only (Config.NewVersion of the package
	// ID, which the device calls only to install it: a simulator's
	// NewVersion may be slow).
	Version string
	// Package is the FOTA package ID, the last path segment of the Package
	// URI ("" for a URI without a path); "" for PCP.
	Package string
	// Bytes: for EventDownloadDone, the bytes downloaded; else 0.
	Bytes int64
	// Code: for EventFailed and EventReported, the code reported: the
	// Update Result (FOTA) or the PCP result code (PCP); else 0.
	Code int
	// Time is the device's Clock when it happened.
	Time time.Time
}

// Upgrade kinds of an Event.
const (
	upgradeFirmware = "firmware"
	upgradeSoftware = "software"
)

// eventQueue hands a device's events to Config.OnEvent one at a time, in
// the order they were queued, and never with the device's lock held: push
// may be called with Device.mu held; whoever pushed calls flush once it holds
// no device lock. A flush that finds another one delivering leaves its
// events to it.
type eventQueue struct {
	fn func(Event)

	mu         sync.Mutex
	q          []Event
	delivering bool
}

func (e *eventQueue) push(ev Event) {
	if e.fn == nil {
		return
	}
	e.mu.Lock()
	e.q = append(e.q, ev)
	e.mu.Unlock()
}

func (e *eventQueue) flush() {
	if e.fn == nil {
		return
	}
	e.mu.Lock()
	if e.delivering {
		e.mu.Unlock()
		return
	}
	e.delivering = true
	for len(e.q) > 0 {
		q := e.q
		e.q = nil
		e.mu.Unlock()
		for _, ev := range q {
			e.fn(ev)
		}
		e.mu.Lock()
	}
	e.delivering = false
	e.mu.Unlock()
}

// event queues an event, stamped with the device's clock. The caller
// flushes (d.unlock, or d.ev.flush without the lock).
func (d *Device) event(ev Event) {
	if d.ev.fn == nil {
		return
	}
	ev.Time = d.clk.Now()
	d.ev.push(ev)
}

// failed queues EventFailed and EventReported of ev (Kind set) for a
// failure code.
func (d *Device) failed(ev Event, code int) {
	ev.Code = code
	ev.Kind = EventFailed
	d.event(ev)
	ev.Kind = EventReported
	d.event(ev)
}

// unlock releases d.mu, then delivers the events queued meanwhile.
func (d *Device) unlock() {
	d.mu.Unlock()
	d.ev.flush()
}

// pacer keeps a download within Behaviour.BytesPerSecond on the device's
// clock: the bytes counted since start may be in at start + bytes/rate.
type pacer struct {
	rate  int64 // bytes per second; <= 0: unlimited
	start time.Time
	base  int64 // the byte count at start
}

// reset starts the schedule anew at now, from the byte count total.
func (p *pacer) reset(now time.Time, total int64) {
	p.start, p.base = now, total
}

// delay returns how long after now the byte count total is within the
// rate; <= 0 when it is already.
func (p *pacer) delay(now time.Time, total int64) time.Duration {
	n := total - p.base
	if p.rate <= 0 || n <= 0 {
		return 0
	}
	return p.start.Add(bytesDuration(n, p.rate)).Sub(now)
}

// bytesDuration is the time n bytes take at rate bytes per second.
func bytesDuration(n, rate int64) time.Duration {
	return time.Duration(n/rate)*time.Second + time.Duration(n%rate*int64(time.Second)/rate)
}

// sleep waits for dur on the device's clock: nil once it passed (at once
// when dur <= 0: no timer is armed), ctx.Err() when ctx ends first (Stop
// cancels every ctx the device waits with). Once the timer is armed, the
// test hook is told of event.
func (d *Device) sleep(ctx context.Context, dur time.Duration, event string) error {
	if err := ctx.Err(); err != nil || dur <= 0 {
		return err
	}
	t := d.clk.NewTimer(dur)
	defer t.Stop()
	d.mu.Lock()
	d.hookLocked(event)
	d.mu.Unlock()
	select {
	case <-t.C():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
