package actors_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
)

// outageStore is a journal whose database can be down: while it is, every
// journal call fails with persistence.ErrUnavailable, except that the
// first append of the outage (commitOne) is written before it fails, as
// an append whose commit reached the server just before the connection
// was lost: its writer cannot know it was.
type outageStore struct {
	persistence.EventStore
	down      atomic.Bool
	commitOne atomic.Bool
	failed    atomic.Int64 // calls failed by the outage
	committed atomic.Int64 // appends written and reported failed
}

func (o *outageStore) fail() error {
	o.failed.Add(1)
	return fmt.Errorf("outage store: %w", persistence.ErrUnavailable)
}

func (o *outageStore) Append(ctx context.Context, a persistence.Append) (uint64, error) {
	if !o.down.Load() {
		return o.EventStore.Append(ctx, a)
	}
	if o.commitOne.CompareAndSwap(true, false) {
		if _, err := o.EventStore.Append(ctx, a); err != nil {
			return 0, err
		}
		o.committed.Add(1)
	}
	return 0, o.fail()
}

func (o *outageStore) Load(ctx context.Context, st persistence.Stream, after uint64, fn func(persistence.Event) error) error {
	if o.down.Load() {
		return o.fail()
	}
	return o.EventStore.Load(ctx, st, after, fn)
}

func (o *outageStore) LoadSnapshot(ctx context.Context, st persistence.Stream) (persistence.Snapshot, bool, error) {
	if o.down.Load() {
		return persistence.Snapshot{}, false, o.fail()
	}
	return o.EventStore.LoadSnapshot(ctx, st)
}

func (o *outageStore) LoadRecords(ctx context.Context, st persistence.Stream, fn func(persistence.Record) error) error {
	if o.down.Load() {
		return o.fail()
	}
	return o.EventStore.LoadRecords(ctx, st, fn)
}

func (o *outageStore) LastSeq(ctx context.Context, st persistence.Stream) (uint64, error) {
	if o.down.Load() {
		return 0, o.fail()
	}
	return o.EventStore.LastSeq(ctx, st)
}

// TestEngineStoreOutage (issue 22): the journal's database goes down in
// the middle of a campaign and comes back 10 minutes later. Meanwhile
// commands and device reports fail with persistence.ErrUnavailable (so
// that nothing is acknowledged that is not durable), and no actor gives
// up: once the store is back every actor recovers from it, the inputs of
// other actors that waited are stepped, and the campaign ends with every
// device upgraded exactly once, although the first append of the outage
// was written while its writer was told it failed.
func TestEngineStoreOutage(t *testing.T) {
	specs := fleet(200, 4, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	store := &outageStore{EventStore: memstore.New()}
	r := newFleetRigOn(t, specs, store)
	ctx := context.Background()
	// The scripted devices do not send a refused report again, so the few
	// whose step's deadline passes during the outage fail it; the policy
	// retries them.
	policy := &messages.Policy{RetryCount: 1, RetryIntervalMinutes: 5}
	if err := r.e.CreateTask(ctx, createTask("campaign", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), policy)); err != nil {
		t.Fatal(err)
	}
	r.runUntil(func() bool { return r.task("campaign").Progress.Success >= 20 }, 24*time.Hour)

	store.commitOne.Store(true)
	store.down.Store(true)
	if err := r.e.CreateTask(ctx, createTask("later", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs[:1]), nil)); !errors.Is(err, persistence.ErrUnavailable) {
		t.Fatalf("CreateTask while the store is down: %v, want persistence.ErrUnavailable", err)
	}
	if err := r.e.Deliver(ctx, "outsider", versionReport("1.0")); !errors.Is(err, persistence.ErrUnavailable) {
		t.Fatalf("a report while the store is down: %v, want persistence.ErrUnavailable", err)
	}
	// 10 minutes of protocol time: deadlines fire, devices report, actors
	// retry their recovery.
	end := r.clk.Now().Add(10 * time.Minute)
	for r.clk.Now().Before(end) {
		next, ok := r.clk.NextDeadline()
		if !ok || next.After(end) {
			next = end
		}
		r.clk.AdvanceTo(next)
		r.e.Settle()
	}
	if store.failed.Load() == 0 || store.committed.Load() != 1 {
		t.Fatalf("the outage failed %d calls and wrote %d append reported failed; want some and 1", store.failed.Load(), store.committed.Load())
	}
	t.Logf("calls failed by the outage: %d", store.failed.Load())

	store.down.Store(false)
	r.runUntil(r.finished("campaign"), 48*time.Hour)
	v := r.task("campaign")
	if want := (taskfsm.Progress{Total: 200, Success: 200}); v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS || v.Progress != want {
		fails, _ := r.e.TaskDevices(ctx, "campaign", 0, 10, messages.SubtaskStatus_SUBTASK_STATUS_FAIL)
		t.Fatalf("task after the outage: %v %+v; failed: %+v", v.Status, v.Progress, fails.Subtasks)
	}
	for _, s := range specs {
		d, _ := r.tr.Device(s.ID)
		if d.Counters.Executes != 1 || d.Counters.Upgrades != 1 || d.FwVersion != "2.0" {
			t.Errorf("%s: %d executes, %d upgrades, version %q", s.ID, d.Counters.Executes, d.Counters.Upgrades, d.FwVersion)
		}
	}
	if len(r.violations) > 0 {
		t.Fatalf("cell budget broken %d times, first: %s", len(r.violations), r.violations[0])
	}
	// The store is back for every actor: a new task runs.
	if err := r.e.CreateTask(ctx, createTask("later", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs[:1]), nil)); err != nil {
		t.Fatalf("CreateTask once the store is back: %v", err)
	}
	r.runUntil(r.finished("later"), 24*time.Hour)
}
