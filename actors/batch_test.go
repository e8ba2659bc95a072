package actors_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/actors/cell/cellfsm"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
)

// cellGateStore is a memstore whose first append of stream gate waits for
// release (entered is closed once it waits); it records the events of each
// append of that stream.
type cellGateStore struct {
	persistence.EventStore
	gate             persistence.Stream
	entered, release chan struct{}
	once             sync.Once
	mu               sync.Mutex
	appends          [][]persistence.Event
}

func (s *cellGateStore) Append(ctx context.Context, a persistence.Append) (uint64, error) {
	if a.Stream == s.gate {
		s.once.Do(func() {
			close(s.entered)
			<-s.release
		})
	}
	seq, err := s.EventStore.Append(ctx, a)
	if err == nil && a.Stream == s.gate && len(a.Events) > 0 {
		s.mu.Lock()
		s.appends = append(s.appends, a.Events)
		s.mu.Unlock()
	}
	return seq, err
}

// TestCellBatchesItsInputs (issue 21): the permit requests a cell finds in
// its mailbox while it writes are stepped one after the other and journaled
// in one append, before any of their grants goes out; the journal folds to
// the state the cell answers.
func TestCellBatchesItsInputs(t *testing.T) {
	specs := fleet(5, 1, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	cellID := specs[0].CellID
	store := &cellGateStore{
		EventStore: memstore.New(), gate: persistence.Stream{Kind: persistence.KindCell, ID: cellID},
		entered: make(chan struct{}), release: make(chan struct{}),
	}
	r := newFleetRigOn(t, specs, store)
	request := func(i int) *messages.CellInput {
		rsrp, sinr := int32(-90), int32(12)
		return &messages.CellInput{Kind: &messages.CellInput_RequestPermit{RequestPermit: &messages.RequestPermit{
			CellId: cellID, DeviceId: specs[i].ID, Rsrp: &rsrp, Sinr: &sinr, TaskId: "t1", Attempt: 1,
		}}}
	}
	r.e.SendCell(cellID, request(0))
	<-store.entered // the cell writes request 0's step; the others queue meanwhile
	for i := 1; i < len(specs); i++ {
		r.e.SendCell(cellID, request(i))
	}
	close(store.release)
	r.e.Settle()

	store.mu.Lock()
	appends := store.appends
	store.mu.Unlock()
	if len(appends) < 2 {
		t.Fatalf("%d appends of the cell, want the first request's and the batch's", len(appends))
	}
	granted := func(evs []persistence.Event) (ids []string) {
		for _, ev := range evs {
			ce := &messages.CellEvent{}
			if err := proto.Unmarshal(ev.Payload, ce); err != nil {
				t.Fatal(err)
			}
			if g := ce.GetPermitGranted(); g != nil {
				ids = append(ids, g.GetDeviceId())
			}
		}
		return ids
	}
	if got := granted(appends[0]); fmt.Sprint(got) != fmt.Sprint([]string{specs[0].ID}) {
		t.Errorf("first append grants %v, want %s", got, specs[0].ID)
	}
	want := []string{specs[1].ID, specs[2].ID, specs[3].ID, specs[4].ID}
	if got := granted(appends[1]); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("second append grants %v, want the four queued requests' %v in one batch", got, want)
	}

	live, err := r.e.Cell(context.Background(), cellID)
	if err != nil {
		t.Fatal(err)
	}
	var folded cellfsm.State
	err = store.Load(context.Background(), store.gate, 0, func(ev persistence.Event) error {
		ce := &messages.CellEvent{}
		if err := proto.Unmarshal(ev.Payload, ce); err != nil {
			return err
		}
		folded = cellfsm.Evolve(folded, ce)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if folded.Holders() != live.Holders() || folded.Waiting() != live.Waiting() || folded.Used() != live.Used() {
		t.Errorf("journal folds to %d holders, %d waiting, %d used; the cell answers %d, %d, %d",
			folded.Holders(), folded.Waiting(), folded.Used(), live.Holders(), live.Waiting(), live.Used())
	}
}

// outcomeGateStore is a memstore whose first append of a task event
// SubtaskFinished waits for release (entered is closed once it waits); it
// records how many SubtaskFinished each append of the task carries.
type outcomeGateStore struct {
	persistence.EventStore
	entered, release chan struct{}
	once             sync.Once
	mu               sync.Mutex
	finished         []int
	synced           []bool
}

func (s *outcomeGateStore) Append(ctx context.Context, a persistence.Append) (uint64, error) {
	n := 0
	if a.Stream.Kind == persistence.KindTask {
		for _, ev := range a.Events {
			te := &messages.TaskEvent{}
			if err := proto.Unmarshal(ev.Payload, te); err != nil {
				return 0, err
			}
			if te.GetSubtaskFinished() != nil {
				n++
			}
		}
	}
	if n > 0 {
		s.once.Do(func() {
			close(s.entered)
			<-s.release
		})
	}
	seq, err := s.EventStore.Append(ctx, a)
	if err == nil && n > 0 {
		s.mu.Lock()
		s.finished = append(s.finished, n)
		s.synced = append(s.synced, !a.NoSync)
		s.mu.Unlock()
	}
	return seq, err
}

// TestTaskBatchesItsInputs (issue 21): the outcomes a task finds in its
// mailbox while it writes one are journaled in one synced append; its
// records, its journal and its read model agree afterwards.
func TestTaskBatchesItsInputs(t *testing.T) {
	ctx := context.Background()
	specs := fleet(5, 1, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	store := &outcomeGateStore{EventStore: memstore.New(), entered: make(chan struct{}), release: make(chan struct{})}
	clk := clocktest.New(epoch)
	tr, up := newFleetTransport(t, clk, specs) // never connected: the jobs wait for their devices
	r := newRig(t, clk, store, tr, up)
	t.Cleanup(r.e.Stop)
	if err := r.e.CreateTask(ctx, createTask("t1", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), nil)); err != nil {
		t.Fatal(err)
	}
	r.e.Settle()
	outcome := func(i int) *messages.TaskInput {
		return &messages.TaskInput{Kind: &messages.TaskInput_Outcome{Outcome: &messages.ReportOutcome{
			TaskId: "t1", DeviceId: specs[i].ID, Attempt: 1, Status: messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS, SourceVersion: "1.0",
		}}}
	}
	r.e.SendTask("t1", outcome(0))
	<-store.entered
	for i := 1; i < len(specs); i++ {
		r.e.SendTask("t1", outcome(i))
	}
	close(store.release)
	r.e.Settle()

	store.mu.Lock()
	finished, synced := store.finished, store.synced
	store.mu.Unlock()
	if fmt.Sprint(finished) != "[1 4]" || fmt.Sprint(synced) != "[true true]" {
		t.Errorf("appends carry %v sub-task outcomes, synced %v; want [1 4], both synced", finished, synced)
	}
	folded, recovered, fromRecords, err := actors.TaskStates(ctx, store, "t1")
	if err != nil || !fromRecords {
		t.Fatalf("task state: from records %v, %v", fromRecords, err)
	}
	if f, g := folded.Progress(), recovered.Progress(); f != g || f.Success != 5 {
		t.Errorf("journal folds to %+v, records hold %+v; want 5 succeeded", f, g)
	}
	want, err := r.e.AskTask(ctx, "t1", 0, len(specs), 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.e.TaskDevices(ctx, "t1", 0, len(specs), 0)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got.Subtasks) != fmt.Sprint(want.Subtasks) {
		t.Errorf("read model answers %v, the actor %v", got.Subtasks, want.Subtasks)
	}
}
