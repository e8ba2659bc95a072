package actors

import (
	"reflect"
	"testing"

	"github.com/otafleet/otafleet/actors/cell/cellfsm"
	"github.com/otafleet/otafleet/messages"
)

func TestCellViewOf(t *testing.T) {
	const (
		good   = messages.CoverageLevel_COVERAGE_LEVEL_GOOD
		medium = messages.CoverageLevel_COVERAGE_LEVEL_MEDIUM
		poor   = messages.CoverageLevel_COVERAGE_LEVEL_POOR
		only   = messages.CoverageLevel_COVERAGE_LEVEL_CELL_ONLY
	)
	s := cellfsm.State{
		Cell: "c1",
		Slots: map[string]cellfsm.Slot{
			"d2": {Level: good, Cost: 1, Job: cellfsm.Job{TaskID: "t1"}},
			"d1": {Level: medium, Cost: 5, Job: cellfsm.Job{TaskID: "t2"}},
		},
		InUse: 6,
		Queue: []cellfsm.Waiter{
			// d1 holds 5 and waits for 50 (a new job at poor coverage):
			// it needs 45 more, which do not fit beside d2's 1.
			{DeviceID: "d1", Level: poor, Cost: 50, Job: cellfsm.Job{TaskID: "t1", Attempt: 2}},
			{DeviceID: "d3", Level: only, Cost: 5, Job: cellfsm.Job{TaskID: "t1"}},
		},
	}
	v := cellViewOf(s, 50)
	want := &CellView{
		CellID: "c1", InUse: 6, Budget: 50,
		Holders:    []CellHolder{{"d1", medium, 5, "t2"}, {"d2", good, 1, "t1"}},
		HoldingMix: CoverageMix{Good: 1, Medium: 1},
		Waiting:    2, WaitingMix: CoverageMix{Poor: 1, CellOnly: 1},
		HeadUnits:   45,
		TaskHolding: map[string]uint32{"t1": 1, "t2": 1},
		TaskWaiting: map[string]uint32{"t1": 2},
	}
	if !reflect.DeepEqual(v, want) {
		t.Fatalf("view\n got %+v\nwant %+v", v, want)
	}
	if !v.Saturated() {
		t.Error("the head needs 45 with 44 left: not saturated")
	}
	// Without d2 the head's 45 fit: the cell admits it at its next step,
	// it does not pace the queue.
	delete(s.Slots, "d2")
	s.InUse = 5
	if v := cellViewOf(s, 50); v.Saturated() || v.HeadUnits != 45 {
		t.Errorf("45 needed, 45 left: saturated %v, head units %d", v.Saturated(), v.HeadUnits)
	}
	// An idle cell publishes nothing.
	ms := newCellModels()
	ms.publish(s, 50)
	ms.publish(cellfsm.New("c1"), 50)
	if len(ms.m) != 0 {
		t.Errorf("an idle cell kept its view: %v", ms.m)
	}
}
