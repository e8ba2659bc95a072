package actors

import (
	"fmt"
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

// BenchmarkCellStepPublish measures what publishing a cell's view costs a
// cell step, side by side with the step alone: a cell of medium devices
// (10 hold, queue of the given length) where each round one holder
// releases (the head is admitted) and asks again (joins the tail), as in a
// long campaign. Both are linear in the queue (cellfsm finds a device in
// the queue by a scan); the ratio of the two sub-benchmarks is the cost.
func BenchmarkCellStepPublish(b *testing.B) {
	cfg := cellfsm.DefaultConfig()
	rsrp, sinr := int32(-110), int32(0) // medium: 5 units, 10 at once
	for _, queue := range []int{100, 1000, 10000} {
		for _, publish := range []bool{false, true} {
			name := fmt.Sprintf("queue=%d/step", queue)
			if publish {
				name = fmt.Sprintf("queue=%d/step+publish", queue)
			}
			b.Run(name, func(b *testing.B) {
				s := cellfsm.New("c")
				ask := func(dev string) *messages.CellInput {
					return &messages.CellInput{Kind: &messages.CellInput_RequestPermit{RequestPermit: &messages.RequestPermit{
						CellId: "c", DeviceId: dev, Rsrp: &rsrp, Sinr: &sinr, TaskId: "t", Attempt: 1}}}
				}
				var err error
				n := 10 + queue
				for i := range n {
					if s, _, err = cellfsm.Step(cfg, s, ask(fmt.Sprintf("d%d", i))); err != nil {
						b.Fatal(err)
					}
				}
				ms := newCellModels()
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; b.Loop(); i++ {
					dev := fmt.Sprintf("d%d", i%n) // the oldest holder
					rel := &messages.CellInput{Kind: &messages.CellInput_ReleasePermit{ReleasePermit: &messages.ReleasePermit{CellId: "c", DeviceId: dev}}}
					for _, in := range []*messages.CellInput{rel, ask(dev)} {
						if s, _, err = cellfsm.Step(cfg, s, in); err != nil {
							b.Fatal(err)
						}
						if publish {
							ms.publish(s, cfg.Budget)
						}
					}
				}
				if s.Holders() != 10 || s.Waiting() != queue {
					b.Fatalf("%d holders, %d waiting", s.Holders(), s.Waiting())
				}
			})
		}
	}
}
