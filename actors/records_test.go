package actors_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
)

// TestTaskConvertsOldSnapshot: a task stream as older builds left it (a
// whole-task snapshot some events back, the journal after it, no records)
// recovers from the snapshot and the tail, is written as records once, and
// the task then runs to its end as if nothing had happened.
func TestTaskConvertsOldSnapshot(t *testing.T) {
	ctx := context.Background()
	clk := clocktest.New(epoch)
	specs := fleet(60, 4, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	tr, up := newFleetTransport(t, clk, specs)
	store := memstore.New()
	r := newRig(t, clk, store, tr, up)
	if err := tr.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.e.CreateTask(ctx, createTask("t", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), &messages.Policy{RetryCount: 2, RetryIntervalMinutes: 1})); err != nil {
		t.Fatal(err)
	}
	r.runUntil(func() bool { return r.task("t").Progress.Success >= 20 }, 24*time.Hour)
	r.e.Stop()
	up.Set(nil)

	// Make the stream an old one: no records, a snapshot 5 events back.
	st := persistence.Stream{Kind: persistence.KindTask, ID: "t"}
	last, err := store.LastSeq(ctx, st)
	if err != nil || last < 10 {
		t.Fatalf("the task journaled %d events (%v)", last, err)
	}
	var drop []persistence.Record
	if err := store.LoadRecords(ctx, st, func(rec persistence.Record) error {
		drop = append(drop, persistence.Record{Key: rec.Key, Delete: true})
		return nil
	}); err != nil || len(drop) < 2 {
		t.Fatalf("the task has %d records (%v)", len(drop), err)
	}
	if _, err := store.Append(ctx, persistence.Append{Stream: st, Expected: last, Records: drop}); err != nil {
		t.Fatal(err)
	}
	var old taskfsm.State
	if err := store.Load(ctx, st, 0, func(ev persistence.Event) error {
		if ev.Seq > last-5 {
			return nil
		}
		e := &messages.TaskEvent{}
		if err := proto.Unmarshal(ev.Payload, e); err != nil {
			return err
		}
		old = taskfsm.Evolve(old, e)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	snap, err := actors.OldTaskSnapshot(old)
	if err != nil {
		t.Fatal(err)
	}
	snap.Seq = last - 5
	if err := store.SaveSnapshot(ctx, st, snap); err != nil {
		t.Fatal(err)
	}
	if _, _, fromRecords, err := actors.TaskStates(ctx, store, "t"); err != nil || fromRecords {
		t.Fatalf("the old stream has records (%v)", err)
	}

	r2 := newRig(t, clk, store, tr, up)
	t.Cleanup(r2.e.Stop)
	if v := r2.task("t"); v.Progress.Success < 20 {
		t.Fatalf("recovered %+v", v.Progress)
	}
	checkTaskRecovery(t, "after the conversion", store, "t", false)
	r2.runUntil(r2.finished("t"), 48*time.Hour)
	if v := r2.task("t"); v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS || v.Progress.Success != 60 {
		t.Errorf("after recovery: %v %+v", v.Status, v.Progress)
	}
	checkTaskRecovery(t, "at the end", store, "t", false)
	for _, s := range specs {
		d, _ := tr.Device(s.ID)
		if c := d.Counters; c.Executes > 1 || c.Upgrades != 1 {
			t.Errorf("%s: executes %d, upgrades %d", s.ID, c.Executes, c.Upgrades)
		}
	}
}
