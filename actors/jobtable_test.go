package actors_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
)

// sameJobs fails the test unless every device's job table entry is the job
// its actor shows when asked; it returns the number of entries.
func sameJobs(t *testing.T, e *actors.Engine, devices []string) int {
	t.Helper()
	n := 0
	for _, id := range devices {
		dv, err := e.Device(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		want, wantOK := actors.JobStageOf(dv.State)
		got, ok := e.DeviceJob(id)
		if ok != wantOK || got != want {
			t.Fatalf("%s: job table %+v %v, actor %+v %v", id, got, ok, want, wantOK)
		}
		if ok {
			n++
		}
	}
	return n
}

// TestDeviceJobIsTheActorsJob (issue 21): at every step of a campaign with
// retries and failures, each device's job table entry (what ListTaskDevices
// shows of a running sub-task) is the job its actor shows when asked; once
// the task has finished the table is empty (an idle fleet holds nothing
// there); and after a restart in the middle of a campaign, the recovered
// devices have rebuilt their entries.
func TestDeviceJobIsTheActorsJob(t *testing.T) {
	specs := fleet(40, 3, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	for i := range specs {
		switch {
		case i%10 == 0:
			specs[i].Behaviour.FailDownloads = 1 // retried automatically, then succeeds
		case i%7 == 0:
			specs[i].Behaviour.FailDownloads = 3 // fails for good
		}
	}
	store := memstore.New()
	r := newFleetRigOn(t, specs, store)
	ctx := context.Background()
	devs := ids(specs)
	if err := r.e.CreateTask(ctx, createTask("jt", messages.Protocol_PROTOCOL_LWM2M_FOTA, devs, &messages.Policy{RetryCount: 1, RetryIntervalMinutes: 5})); err != nil {
		t.Fatal(err)
	}
	most := 0
	r.runUntil(func() bool {
		most = max(most, sameJobs(t, r.e, devs))
		return r.task("jt").Status.Final()
	}, 24*time.Hour)
	if most == 0 {
		t.Fatal("no device ever had a job in the table")
	}
	if n := r.e.JobCount(); n != 0 {
		t.Fatalf("%d job table entries after the task finished, want none", n)
	}

	// A second task, stopped half way by a restart: the new engine's
	// devices recover their jobs and publish them again.
	if err := r.e.CreateTask(ctx, createTask("jt2", messages.Protocol_PROTOCOL_LWM2M_FOTA, devs, nil)); err != nil {
		t.Fatal(err)
	}
	r.runUntil(func() bool {
		p := r.task("jt2").Progress
		return p.Success+p.Fail > 0 && p.Processing > 0
	}, 24*time.Hour)
	before := sameJobs(t, r.e, devs)
	r.e.Stop()
	// No device is connected: the entries come from recovery alone.
	clk := clocktest.New(r.clk.Now())
	tr, up := newFleetTransport(t, clk, specs)
	r2 := newRig(t, clk, store, tr, up)
	t.Cleanup(r2.e.Stop)
	// Start has returned: every device with a job has recovered it (the
	// cells' grants to them may still be on their way).
	if n := r2.e.JobCount(); n != before {
		t.Fatalf("after the restart %d devices have a job in the table, %d before it", n, before)
	}
	r2.e.Settle()
	if n := sameJobs(t, r2.e, devs); n != before {
		t.Fatalf("after the restart %d devices have a job in the table, %d before it", n, before)
	}
}

// deviceGatedStore holds appends to device streams, while hold is set,
// until the test lets each go; other appends pass through.
type deviceGatedStore struct {
	persistence.EventStore
	hold    atomic.Bool
	entered chan struct{}
	gate    chan struct{}
}

func (g *deviceGatedStore) Append(ctx context.Context, a persistence.Append) (uint64, error) {
	if a.Stream.Kind == persistence.KindDevice && g.hold.Load() {
		g.entered <- struct{}{}
		select {
		case <-g.gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return g.EventStore.Append(ctx, a)
}

// TestTaskDevicePageDoesNotWaitForDeviceActors (issue 21): while a running
// device's actor is stuck in a step (its journal write held), a page of the
// task's devices with their stages (what ListTaskDevices reads) answers at
// once with the job as of the device's last journaled step. Before the job
// table, ListTaskDevices asked each running device's actor and waited here.
func TestTaskDevicePageDoesNotWaitForDeviceActors(t *testing.T) {
	store := &deviceGatedStore{EventStore: memstore.New(), entered: make(chan struct{}), gate: make(chan struct{})}
	e, _ := newDeliverEngine(t, store, nil, nil)
	ctx := context.Background()
	devs := []string{"dev-1", "dev-2", "dev-3"}
	if err := e.CreateTask(ctx, createTask("t1", messages.Protocol_PROTOCOL_MQTT, devs, nil)); err != nil {
		t.Fatal(err)
	}
	e.Settle()
	if n := sameJobs(t, e, devs); n != len(devs) {
		t.Fatalf("%d devices have a job in the table, want %d", n, len(devs))
	}
	page := func(ctx context.Context) (actors.TaskView, []actors.JobStage, error) {
		v, err := e.TaskDevices(ctx, "t1", 0, 10, 0)
		if err != nil {
			return v, nil, err
		}
		var jobs []actors.JobStage
		for _, st := range v.Subtasks {
			if st.Status != messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING {
				continue
			}
			j, ok := e.DeviceJob(st.DeviceID)
			if !ok || j.TaskID != "t1" || j.Attempt != st.Attempt {
				return v, nil, errors.New("no job for running sub-task " + st.DeviceID)
			}
			jobs = append(jobs, j)
		}
		return v, jobs, nil
	}
	beforeView, beforeJobs, err := page(ctx)
	if err != nil || len(beforeJobs) != len(devs) {
		t.Fatalf("page before: %v (%d jobs)", err, len(beforeJobs))
	}

	store.hold.Store(true)
	delivered := deliverAsync(ctx, e, "dev-2", versionReport("2.0"))
	<-store.entered // dev-2's actor is inside the report's journal write

	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, jobs, err := page(qctx)
	if err != nil {
		t.Fatalf("page while dev-2's actor is busy: %v", err)
	}
	if !sameView(v, beforeView) || len(jobs) != len(beforeJobs) {
		t.Fatalf("page while dev-2's actor is busy:\n%+v %+v\nwant the last published\n%+v %+v", v, jobs, beforeView, beforeJobs)
	}
	for i := range jobs {
		if jobs[i] != beforeJobs[i] {
			t.Fatalf("job %d while dev-2's actor is busy: %+v, want %+v", i, jobs[i], beforeJobs[i])
		}
	}

	store.hold.Store(false)
	close(store.gate)
	if err := <-delivered; err != nil {
		t.Fatal(err)
	}
	e.Settle()
	sameJobs(t, e, devs)
	if j, ok := e.DeviceJob("dev-2"); ok {
		t.Fatalf("dev-2 reported the target version, its job ended, yet the table has %+v", j)
	}
}
