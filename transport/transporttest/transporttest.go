// Package transporttest is the contract suite of the transport seam: every
// adapter (transport/lwm2m's Server, transport/mqtt's Broker and External,
// bench/sim/memtransport's Transport) runs
//
//	transporttest.Run(t, func(t *testing.T, up transport.Uplinks) transporttest.Adapter { ... })
//
// and must pass it. The factory builds the adapter around the suite's
// Uplinks, with a way to connect simulated devices of its protocol (over
// real sockets on loopback, where the adapter has any). The suite checks what
// transport.Downlinks and transport.Uplinks promise: a connected device's
// presence and answers reach Uplinks under its ID; Send and RevokeToken
// return without blocking, for unknown and departed devices, unknown jobs and
// a closed adapter too, reporting an error where the adapter can tell; and
// concurrent calls are safe (run it with -race). Delivery is best effort, as
// the seam says: a query a device does not answer is sent again, as the
// engine's retries would. Each subtest builds its own adapter; the suite
// closes it. It is for tests only.
package transporttest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport"
)

// Adapter is one adapter under test, as a Factory built it.
type Adapter struct {
	// Downlinks is the adapter.
	Downlinks transport.Downlinks
	// Connect connects a simulated device with the given ID, unknown to the
	// adapter before, and returns once the device is connected as far as it
	// can tell. Its result takes the device away (disconnects or stops it);
	// the factory stops devices still connected when the test ends.
	Connect func(t *testing.T, deviceID string) (disconnect func())
	// VersionQuery returns a downlink of the adapter's protocol that a
	// device answers with its versions (messages.VersionReported).
	VersionQuery func(deviceID string) *messages.Downlink
	// Close closes the adapter; the suite calls it once.
	Close func() error

	// What the adapter can tell, each a promise of its documentation that
	// the suite checks when set.
	//
	// SeesConnections: a device's connection and its departure reach
	// Uplinks (Connected, Disconnected) as they happen. Unset for an
	// adapter that learns of devices only from their reports.
	SeesConnections bool
	// ReportsNoRoute: Send to a device that is not connected (never was,
	// or went away) returns an error. Unset for an adapter that publishes
	// through a broker, where such a device just misses the downlink.
	ReportsNoRoute bool
	// ReportsClosed: Send after Close returns an error.
	ReportsClosed bool
}

// Factory builds a new adapter that delivers to up, for one subtest.
type Factory func(t *testing.T, up transport.Uplinks) Adapter

// Run runs the contract suite against the adapters newAdapter builds.
func Run(t *testing.T, newAdapter Factory) {
	for _, c := range []struct {
		name string
		fn   func(*testing.T, *harness)
	}{
		{"Presence", testPresence},
		{"Reachable", testReachable},
		{"SendUnknownDevice", testSendUnknown},
		{"SendDeviceGone", testSendGone},
		{"RevokeUnknownJob", testRevokeUnknown},
		{"ConcurrentSends", testConcurrentSends},
		{"Closed", testClosed},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := newRecorder()
			a := newAdapter(t, rec)
			if a.Downlinks == nil || a.Connect == nil || a.VersionQuery == nil || a.Close == nil {
				t.Fatal("transporttest: the factory's Adapter needs Downlinks, Connect, VersionQuery and Close")
			}
			h := &harness{a: a, rec: rec}
			t.Cleanup(func() {
				if err := h.close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			c.fn(t, h)
		})
	}
}

// wait bounds every wait of the suite: for an input to reach Uplinks, and
// for a call to return.
const wait = 20 * time.Second

// resend is how long the suite waits for an answer before it sends a query
// again.
const resend = 2 * time.Second

// harness is one subtest's adapter and what reached its Uplinks.
type harness struct {
	a         Adapter
	rec       *recorder
	closeOnce sync.Once
	closeErr  error
}

func (h *harness) close() error {
	h.closeOnce.Do(func() { h.closeErr = h.a.Close() })
	return h.closeErr
}

// returns runs call, which must return within wait: an adapter must not
// block its caller (an actor). It returns call's error.
func returns(t *testing.T, what string, call func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- call() }()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		t.Fatalf("%s did not return within %v: an adapter must not block its caller", what, wait)
		return nil
	}
}

func (h *harness) send(t *testing.T, dl *messages.Downlink) error {
	t.Helper()
	return returns(t, fmt.Sprintf("Send(%s)", dl.GetDeviceId()), func() error {
		return h.a.Downlinks.Send(context.Background(), dl)
	})
}

// answers sends a version query to the device until a VersionReported of
// it reaches Uplinks.
func (h *harness) answers(t *testing.T, id string) {
	t.Helper()
	from := h.rec.len()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for {
		if err := h.send(t, h.a.VersionQuery(id)); err != nil {
			t.Fatalf("Send(version query to connected device %s): %v", id, err)
		}
		tm := clock.Real().NewTimer(resend)
		err := h.rec.await(ctx, tm.C(), from, id, isVersion)
		tm.Stop()
		switch {
		case err == nil:
			return
		case ctx.Err() != nil:
			t.Fatalf("no VersionReported of %s reached Uplinks within %v of version queries; got %v", id, wait, h.rec.of(id))
		}
	}
}

// present waits for the device's input of kind want at Uplinks, delivered
// after the first from inputs.
func (h *harness) present(t *testing.T, from int, id string, want func(*messages.DeviceInput) bool, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := h.rec.await(ctx, nil, from, id, want); err != nil {
		t.Fatalf("no %s of %s reached Uplinks within %v; got %v", what, id, wait, h.rec.of(id))
	}
}

func isConnected(in *messages.DeviceInput) bool    { return in.GetConnected() != nil }
func isDisconnected(in *messages.DeviceInput) bool { return in.GetDisconnected() != nil }
func isVersion(in *messages.DeviceInput) bool      { return in.GetVersionReported() != nil }

// testPresence: a device's connection reaches Uplinks as Connected, its
// departure as Disconnected, under its ID.
func testPresence(t *testing.T, h *harness) {
	if !h.a.SeesConnections {
		t.Skip("the adapter learns of devices only from their reports (see Reachable)")
	}
	from := h.rec.len()
	gone := h.a.Connect(t, "dev-1")
	h.present(t, from, "dev-1", isConnected, "Connected")
	from = h.rec.len()
	gone()
	h.present(t, from, "dev-1", isDisconnected, "Disconnected")
}

// testReachable: a connected device gets a downlink and its answer reaches
// Uplinks under its ID, and only under its ID.
func testReachable(t *testing.T, h *harness) {
	h.a.Connect(t, "dev-1")
	h.a.Connect(t, "dev-2")
	h.answers(t, "dev-1")
	h.answers(t, "dev-2")
	for _, id := range h.rec.ids() {
		if id != "dev-1" && id != "dev-2" {
			t.Errorf("an input reached Uplinks for %q, a device nobody connected", id)
		}
	}
}

// testSendUnknown: Send to a device the adapter never saw returns, with an
// error where the adapter can tell.
func testSendUnknown(t *testing.T, h *harness) {
	h.a.Connect(t, "dev-1")
	err := h.send(t, h.a.VersionQuery("dev-unknown"))
	if h.a.ReportsNoRoute && err == nil {
		t.Error("Send to a device that never connected returned nil, want an error (no route)")
	}
	h.answers(t, "dev-1") // and the adapter still works
}

// testSendGone: Send to a device that went away returns, with an error
// where the adapter can tell.
func testSendGone(t *testing.T, h *harness) {
	from := h.rec.len()
	gone := h.a.Connect(t, "dev-1")
	h.a.Connect(t, "dev-2")
	h.answers(t, "dev-1")
	gone()
	if h.a.SeesConnections {
		h.present(t, from, "dev-1", isDisconnected, "Disconnected")
	}
	err := h.send(t, h.a.VersionQuery("dev-1"))
	if h.a.ReportsNoRoute && err == nil {
		t.Error("Send to a device that went away returned nil, want an error (no route)")
	}
	h.answers(t, "dev-2")
}

// testRevokeUnknownJob: revoking the token of a job the adapter never saw
// (of a connected device, and of an unknown one) is harmless: it returns,
// and the device still answers.
func testRevokeUnknown(t *testing.T, h *harness) {
	h.a.Connect(t, "dev-1")
	for _, r := range []*messages.RevokeToken{
		{TaskId: "task-never-run", DeviceId: "dev-1", Attempt: 3},
		{TaskId: "task-never-run", DeviceId: "dev-unknown", Attempt: 1},
	} {
		_ = returns(t, fmt.Sprintf("RevokeToken(%s, %s)", r.GetTaskId(), r.GetDeviceId()), func() error {
			return h.a.Downlinks.RevokeToken(context.Background(), r)
		})
	}
	h.answers(t, "dev-1")
}

// testConcurrentSends: Sends and RevokeTokens from many goroutines at once,
// to connected and unknown devices, all return (and race with nothing
// under -race); then the devices still answer.
func testConcurrentSends(t *testing.T, h *harness) {
	ids := []string{"dev-1", "dev-2", "dev-unknown"}
	h.a.Connect(t, ids[0])
	h.a.Connect(t, ids[1])
	const goroutines, each = 6, 4
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*each*len(ids))
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := ids[(g+i)%len(ids)]
				errs <- h.a.Downlinks.Send(context.Background(), h.a.VersionQuery(id))
				if i == each-1 {
					_ = h.a.Downlinks.RevokeToken(context.Background(), &messages.RevokeToken{TaskId: "t", DeviceId: id, Attempt: uint32(g)})
				}
			}
		}()
	}
	_ = returns(t, fmt.Sprintf("%d concurrent Sends", goroutines*each), func() error {
		wg.Wait()
		return nil
	})
	close(errs)
	sent := 0
	for err := range errs {
		if err == nil {
			sent++
		}
	}
	if sent == 0 {
		t.Error("no concurrent Send succeeded, though two of the three devices are connected")
	}
	h.answers(t, ids[0])
	h.answers(t, ids[1])
}

// testClosed: after Close, Send and RevokeToken return, Send with an error
// where the adapter can tell.
func testClosed(t *testing.T, h *harness) {
	h.a.Connect(t, "dev-1")
	h.answers(t, "dev-1")
	if err := returns(t, "Close", h.close); err != nil {
		t.Fatalf("Close: %v", err)
	}
	err := h.send(t, h.a.VersionQuery("dev-1"))
	if h.a.ReportsClosed && err == nil {
		t.Error("Send after Close returned nil, want an error")
	}
	_ = returns(t, "RevokeToken after Close", func() error {
		return h.a.Downlinks.RevokeToken(context.Background(), &messages.RevokeToken{TaskId: "t", DeviceId: "dev-1", Attempt: 1})
	})
}

// delivery is one input that reached Uplinks.
type delivery struct {
	id string
	in *messages.DeviceInput
}

// recorder is the suite's Uplinks: it keeps every delivery, in order.
type recorder struct {
	mu      sync.Mutex
	got     []delivery
	changed chan struct{} // closed and replaced on every delivery
}

var _ transport.Uplinks = (*recorder)(nil)

func newRecorder() *recorder { return &recorder{changed: make(chan struct{})} }

func (r *recorder) Deliver(_ context.Context, id string, in *messages.DeviceInput) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, delivery{id, in})
	close(r.changed)
	r.changed = make(chan struct{})
	return nil
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// await waits until a delivery after the first from is of device id and
// satisfies want; it returns ctx's error, or errGiveUp when giveUp fires
// first.
func (r *recorder) await(ctx context.Context, giveUp <-chan time.Time, from int, id string, want func(*messages.DeviceInput) bool) error {
	for {
		r.mu.Lock()
		for _, d := range r.got[from:] {
			if d.id == id && want(d.in) {
				r.mu.Unlock()
				return nil
			}
		}
		changed := r.changed
		r.mu.Unlock()
		select {
		case <-changed:
		case <-giveUp:
			return errGiveUp
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

var errGiveUp = errors.New("transporttest: no answer yet")

// of returns the kinds of the inputs of device id, for messages.
func (r *recorder) of(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, d := range r.got {
		if d.id == id {
			out = append(out, fmt.Sprintf("%T", d.in.GetKind()))
		}
	}
	return out
}

// ids returns the device IDs that inputs were delivered for.
func (r *recorder) ids() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, d := range r.got {
		if !seen[d.id] {
			seen[d.id] = true
			out = append(out, d.id)
		}
	}
	return out
}
