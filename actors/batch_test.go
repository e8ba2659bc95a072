package actors_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors/cell/cellfsm"
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
