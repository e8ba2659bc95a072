package actors_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
)

// gatedStore holds every append to a device stream until the test lets it
// go (release) or makes it fail (fail); other streams pass through.
type gatedStore struct {
	persistence.EventStore
	entered chan persistence.Append // an append reached the gate
	gate    chan error              // its outcome: nil lets it through
}

func newGatedStore() *gatedStore { return newGatedStoreOn(memstore.New()) }

// newGatedStoreOn is newGatedStore over store.
func newGatedStoreOn(store persistence.EventStore) *gatedStore {
	return &gatedStore{EventStore: store, entered: make(chan persistence.Append, 64), gate: make(chan error)}
}

func (g *gatedStore) Append(ctx context.Context, a persistence.Append) (uint64, error) {
	if a.Stream.Kind != persistence.KindDevice {
		return g.EventStore.Append(ctx, a)
	}
	g.entered <- a
	select {
	case err := <-g.gate:
		if err != nil {
			return 0, err
		}
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return g.EventStore.Append(ctx, a)
}

// newDeliverEngine starts an engine over store; the addresses of stopped
// actors go to stopped when it is not nil.
func newDeliverEngine(t *testing.T, store persistence.EventStore, reg prometheus.Registerer, stopped chan<- actors.Address) (*actors.Engine, *clocktest.Clock) {
	t.Helper()
	clk := clocktest.New(epoch)
	deps := actors.Deps{Store: store, Clock: clk, Transport: nullTransport{}, Metrics: reg}
	if stopped != nil {
		deps.Deactivated = func(a actors.Address) { stopped <- a }
	}
	e, err := actors.New(actors.Config{PassivateAfter: time.Minute}, deps)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return e, clk
}

func versionReport(v string) *messages.DeviceInput {
	return &messages.DeviceInput{Kind: &messages.DeviceInput_VersionReported{VersionReported: &messages.VersionReported{FwVersion: proto.String(v)}}}
}

// deliverAsync runs Deliver in a goroutine; its result arrives on the channel.
func deliverAsync(ctx context.Context, e *actors.Engine, id string, in *messages.DeviceInput) <-chan error {
	done := make(chan error, 1)
	go func() { done <- e.Deliver(ctx, id, in) }()
	return done
}

// TestDeliverWaitsForTheJournal (issue 18 item 10): Deliver of a report
// returns only once the report's events are durable, and returns the error
// when the journal write fails, so that the transport does not acknowledge
// it. Before the fix Deliver returned as soon as the report was in the
// actor's mailbox. On every store.
func TestDeliverWaitsForTheJournal(t *testing.T) {
	forEachStore(t, deliverWaitsForTheJournal)
}

func deliverWaitsForTheJournal(t *testing.T, s engineStore) {
	ctx := context.Background()
	st, _ := s.openFresh(t)
	store := newGatedStoreOn(st)
	e, _ := newDeliverEngine(t, store, nil, nil)

	done := deliverAsync(ctx, e, "dev-1", versionReport("1.0"))
	<-store.entered // the actor is appending the report's event
	select {
	case err := <-done:
		t.Fatalf("Deliver returned (%v) while the report's append was still in progress", err)
	default:
	}
	store.gate <- nil
	if err := <-done; err != nil {
		t.Fatalf("Deliver after the append: %v", err)
	}
	// VersionRecorded, and PresenceChanged: a report shows the device online.
	if seq, err := store.LastSeq(ctx, persistence.Stream{Kind: persistence.KindDevice, ID: "dev-1"}); err != nil || seq != 2 {
		t.Fatalf("journal of dev-1 ends at %d (%v), want 2", seq, err)
	}

	// A failed append is Deliver's error: the report must not be acknowledged.
	done = deliverAsync(ctx, e, "dev-1", versionReport("2.0"))
	<-store.entered
	errDisk := errors.New("disk on fire")
	store.gate <- errDisk
	if err := <-done; !errors.Is(err, errDisk) {
		t.Fatalf("Deliver with a failed append = %v, want %v", err, errDisk)
	}

	// The actor's successor recovers from the journal and takes the resent report.
	done = deliverAsync(ctx, e, "dev-1", versionReport("2.0"))
	<-store.entered
	store.gate <- nil
	if err := <-done; err != nil {
		t.Fatalf("Deliver of the resent report: %v", err)
	}
	v, err := e.Device(ctx, "dev-1")
	if err != nil || v.State.FwVersion != "2.0" {
		t.Fatalf("device after the resent report: fw %q, %v", v.State.FwVersion, err)
	}
}

// TestDeliverBoundedByContext: a report whose journal write hangs makes
// Deliver return the context's error when the caller gives up.
func TestDeliverBoundedByContext(t *testing.T) {
	store := newGatedStore()
	e, _ := newDeliverEngine(t, store, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := deliverAsync(ctx, e, "dev-1", versionReport("1.0"))
	<-store.entered
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Deliver after its context ended = %v, want context.Canceled", err)
	}
	store.gate <- nil // let the actor finish
}

// TestDeliverStopsWithTheEngine: a report waiting for its journal write is
// answered ErrClosed when the engine stops (no acknowledgement; the device
// sends it again to the next run).
func TestDeliverStopsWithTheEngine(t *testing.T) {
	store := newGatedStore()
	e, _ := newDeliverEngine(t, store, nil, nil)
	done := deliverAsync(context.Background(), e, "dev-1", versionReport("1.0"))
	<-store.entered
	stopped := make(chan struct{})
	go func() { e.Stop(); close(stopped) }()
	if err := <-done; !errors.Is(err, actors.ErrClosed) {
		t.Fatalf("Deliver while the engine stops = %v, want ErrClosed", err)
	}
	store.gate <- nil // the actor finishes the message at hand
	<-stopped
}

// TestDeliverDoesNotWaitForPresence: presence and DownloadServed notes are
// queued without waiting for their journal writes (nothing is acknowledged on
// their strength); invalid reports are answered nil (acknowledged: resending
// cannot help).
func TestDeliverDoesNotWaitForPresence(t *testing.T) {
	ctx := context.Background()
	store := newGatedStore()
	e, _ := newDeliverEngine(t, store, nil, nil)
	if err := e.Deliver(ctx, "dev-1", &messages.DeviceInput{Kind: &messages.DeviceInput_Connected{Connected: &messages.Connected{}}}); err != nil {
		t.Fatal(err)
	}
	<-store.entered // the Connected step's append waits at the gate; Deliver did not
	store.gate <- nil
	invalid := &messages.DeviceInput{Kind: &messages.DeviceInput_VersionReported{VersionReported: &messages.VersionReported{}}}
	if err := e.Deliver(ctx, "dev-1", invalid); err != nil {
		t.Fatalf("Deliver of an invalid report = %v, want nil (acknowledged)", err)
	}
}

// counterValue reads the counter name{kind=kind} from reg (0 when absent).
func counterValue(t *testing.T, reg *prometheus.Registry, name, kind string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == kind {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestDuplicateReports (issue 18 item 7, engine part): a burst of 5,000
// identical reports (arrival times apart) journals one event; the other 4,999
// are acknowledged and counted as duplicates. A report that changes the state
// is never taken for a duplicate, and the memory of the last report does not
// survive passivation (a repeat after it is stepped afresh). On every store.
func TestDuplicateReports(t *testing.T) {
	forEachStore(t, duplicateReports)
}

func duplicateReports(t *testing.T, s engineStore) {
	ctx := context.Background()
	store, _ := s.openFresh(t)
	reg := prometheus.NewRegistry()
	stopped := make(chan actors.Address, 1)
	e, clk := newDeliverEngine(t, store, reg, stopped)
	st := persistence.Stream{Kind: persistence.KindDevice, ID: "dev-1"}
	journaled := func() uint64 {
		t.Helper()
		seq, err := store.LastSeq(ctx, st)
		if err != nil {
			t.Fatal(err)
		}
		return seq
	}
	const burst = 5000
	for i := range burst {
		in := versionReport("1.0")
		in.AtUnixNano = messages.UnixNano(epoch.Add(time.Duration(i) * time.Millisecond))
		if err := e.Deliver(ctx, "dev-1", in); err != nil {
			t.Fatal(err)
		}
	}
	// One VersionRecorded and one PresenceChanged (the first report showed the device online).
	if got := journaled(); got != 2 {
		t.Fatalf("%d reports journaled %d events, want 2", burst, got)
	}
	if got := counterValue(t, reg, "otafleet_uplinks_duplicate_total", "version_reported"); got != burst-1 {
		t.Fatalf("otafleet_uplinks_duplicate_total{kind=version_reported} = %v, want %d", got, burst-1)
	}

	// Another input that journals in between: the same report again is not
	// a duplicate of the last journaled step.
	if err := e.Deliver(ctx, "dev-1", &messages.DeviceInput{Kind: &messages.DeviceInput_SetAbnormal{SetAbnormal: &messages.SetAbnormal{Abnormal: true}}}); err != nil {
		t.Fatal(err)
	}
	e.Settle()
	if err := e.Deliver(ctx, "dev-1", versionReport("1.0")); err != nil {
		t.Fatal(err)
	}
	if got := counterValue(t, reg, "otafleet_uplinks_duplicate_total", "version_reported"); got != burst-1 {
		t.Fatalf("a report after another journaled input was counted as a duplicate: %v", got)
	}
	if got := journaled(); got != 3 {
		t.Fatalf("the journal ends at %d, want 3 (AbnormalChanged)", got)
	}

	// Changes are journaled, even back to an earlier value.
	for _, v := range []string{"2.0", "1.0", "2.0"} {
		if err := e.Deliver(ctx, "dev-1", versionReport(v)); err != nil {
			t.Fatal(err)
		}
	}
	if got := journaled(); got != 6 {
		t.Fatalf("after three changes the journal ends at %d, want 6", got)
	}

	// After passivation the actor has forgotten the last report: the repeat is
	// stepped (and journals nothing, the state already has it), not counted.
	clk.Advance(2 * time.Minute)
	if a := <-stopped; a.ID != "dev-1" {
		t.Fatalf("%s stopped, want dev-1", a)
	}
	if err := e.Deliver(ctx, "dev-1", versionReport("2.0")); err != nil {
		t.Fatal(err)
	}
	if got := journaled(); got != 6 {
		t.Fatalf("a repeat after passivation journaled: the journal ends at %d, want 6", got)
	}
	if got := counterValue(t, reg, "otafleet_uplinks_duplicate_total", "version_reported"); got != burst-1 {
		t.Fatalf("duplicates = %v, want %d: neither the changes nor the first repeat after passivation are duplicates", got, burst-1)
	}
}
