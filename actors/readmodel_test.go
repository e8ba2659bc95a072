package actors_test

import (
	"context"
	"reflect"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
)

// taskGatedStore holds appends to task streams, while hold is set, until
// the test lets each go; other appends pass through.
type taskGatedStore struct {
	persistence.EventStore
	hold    atomic.Bool
	entered chan struct{}
	gate    chan struct{}
}

func (g *taskGatedStore) Append(ctx context.Context, a persistence.Append) (uint64, error) {
	if a.Stream.Kind == persistence.KindTask && g.hold.Load() {
		g.entered <- struct{}{}
		select {
		case <-g.gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return g.EventStore.Append(ctx, a)
}

// TestTaskQueriesDoNotWaitForTheActor (issue 21): while the task actor is
// stuck in a step (its journal write held), Task, TaskDevices and TaskWatch
// answer at once with the state of its last journaled step; the step's
// publication then wakes the watcher and shows the new state. Before the
// read model each query waited in the actor's mailbox until its request
// timed out.
func TestTaskQueriesDoNotWaitForTheActor(t *testing.T) {
	store := &taskGatedStore{EventStore: memstore.New(), entered: make(chan struct{}), gate: make(chan struct{})}
	e, _ := newDeliverEngine(t, store, nil, nil)
	ctx := context.Background()
	devs := []string{"dev-1", "dev-2", "dev-3"}
	if err := e.CreateTask(ctx, createTask("t1", messages.Protocol_PROTOCOL_MQTT, devs, nil)); err != nil {
		t.Fatal(err)
	}
	e.Settle()
	before, err := e.TaskDevices(ctx, "t1", 0, 10, 0)
	if err != nil {
		t.Fatal(err)
	}

	store.hold.Store(true)
	stopped := make(chan error, 1)
	go func() { stopped <- e.StopTask(ctx, "t1") }()
	<-store.entered // the actor is inside StopTask's journal write

	// A bounded wait: the queries must not reach the actor at all (before
	// the read model they failed here with the deadline).
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := e.TaskDevices(qctx, "t1", 0, 10, 0)
	if err != nil {
		t.Fatalf("TaskDevices while the actor is busy: %v", err)
	}
	if !sameView(v, before) {
		t.Fatalf("TaskDevices while the actor is busy:\n%+v\nwant the last published\n%+v", v, before)
	}
	w, wake, err := e.TaskWatch(qctx, "t1")
	if err != nil || w.Status != before.Status || w.Progress != before.Progress {
		t.Fatalf("TaskWatch while the actor is busy: %v %+v, %v", w.Status, w.Progress, err)
	}
	select {
	case <-wake:
		t.Fatal("the watch was woken before the step was journaled")
	default:
	}

	store.hold.Store(false)
	close(store.gate)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	<-wake // the stop's publication
	after, err := e.Task(ctx, "t1")
	if err != nil {
		t.Fatal(err)
	}
	if after.Status != messages.TaskStatus_TASK_STATUS_STOPPING && after.Status != messages.TaskStatus_TASK_STATUS_STOPPED {
		t.Fatalf("after the stop: %v %+v", after.Status, after.Progress)
	}
}

// TestReadModelIsTheActorsView (issue 21): at every step of a campaign with
// retries, failures, an on-demand retry of some devices and of all, the read
// model answers every query exactly as the task actor's own view does
// (status, counters, times, rows in target order, filtered and paged), and
// a passivated task is served by its actor again, unchanged.
func TestReadModelIsTheActorsView(t *testing.T) {
	specs := fleet(60, 3, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	for i := range specs {
		switch {
		case i%10 == 0:
			specs[i].Behaviour.FailDownloads = 1 // retried automatically, then succeeds
		case i%7 == 0:
			specs[i].Behaviour.FailDownloads = 3 // fails for good
		}
	}
	r := newFleetRig(t, specs)
	ctx := context.Background()
	if err := r.e.CreateTask(ctx, createTask("rm", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), &messages.Policy{RetryCount: 1, RetryIntervalMinutes: 5})); err != nil {
		t.Fatal(err)
	}
	queries := []struct {
		offset, limit int
		status        messages.SubtaskStatus
	}{
		{0, 0, 0}, {0, 1000, 0}, {7, 9, 0}, {55, 10, 0},
		{0, 1000, messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING},
		{2, 3, messages.SubtaskStatus_SUBTASK_STATUS_WAITING},
		{0, 1000, messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY},
		{1, 1000, messages.SubtaskStatus_SUBTASK_STATUS_FAIL},
		{0, 5, messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS},
	}
	compared := 0
	same := func() {
		t.Helper()
		for _, q := range queries {
			got, err := r.e.TaskDevices(ctx, "rm", q.offset, q.limit, q.status)
			if err != nil {
				t.Fatal(err)
			}
			want, err := r.e.AskTask(ctx, "rm", q.offset, q.limit, q.status)
			if err != nil {
				t.Fatal(err)
			}
			if !sameView(got, want) {
				t.Fatalf("query %+v at %v:\nread model %+v\nactor      %+v", q, r.clk.Now(), got, want)
			}
			compared++
		}
	}
	done := func() bool {
		same()
		return r.task("rm").Status.Final()
	}
	r.runUntil(done, 24*time.Hour)
	if v := r.task("rm"); v.Status != messages.TaskStatus_TASK_STATUS_PARTIAL_SUCCESS || v.Progress.Fail == 0 {
		t.Fatalf("campaign ended %v %+v", v.Status, v.Progress)
	}
	if err := r.e.RetryTask(ctx, "rm", []string{ids(specs)[7], ids(specs)[14]}); err != nil {
		t.Fatal(err)
	}
	r.runUntil(done, 24*time.Hour)
	if err := r.e.RetryTask(ctx, "rm", nil); err != nil {
		t.Fatal(err)
	}
	r.runUntil(done, 24*time.Hour)
	final := r.task("rm")

	// Passivated, the task is asked of its actor again (recovered from the
	// journal), which publishes its read model anew.
	r.clk.Advance(time.Hour)
	r.e.Settle()
	for r.e.Live()["task"] != 0 {
		runtime.Gosched() // the actor is stopping
	}
	if v := r.task("rm"); !sameView(v, final) {
		t.Fatalf("passivated task:\n%+v\nwant\n%+v", v, final)
	}
	same()
	t.Logf("%d queries compared", compared)
}

// sameView reports whether two task views are equal (the definitions as
// protobuf messages).
func sameView(a, b actors.TaskView) bool {
	if !proto.Equal(a.Task, b.Task) {
		return false
	}
	a.Task, b.Task = nil, nil
	return reflect.DeepEqual(a, b)
}
