package rpc_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/bench/sim/memtransport"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// cellSpecs: fw-0..fw-2 with poor coverage in cell-a (each takes the whole
// budget: one holds, two wait), fw-3 and fw-4 with good coverage in cell-b
// (both hold). None reacts to the upgrade, so the holders keep their slots.
func cellSpecs() []memtransport.DeviceSpec {
	var specs []memtransport.DeviceSpec
	for i := range 5 {
		s := lwm2mSpec(fmt.Sprintf("fw-%d", i))
		if i < 3 {
			rsrp, sinr := int32(-120), int32(-5)
			s.CellID, s.RSRP, s.SINR = "cell-a", &rsrp, &sinr
		} else {
			s.CellID = "cell-b"
		}
		s.Behaviour.IgnoreUpgrade = true
		specs = append(specs, s)
	}
	return specs
}

func TestListTaskCells(t *testing.T) {
	te := newTaskEnv(t, cellSpecs())
	f := te.fixture(t)
	ctx := context.Background()
	res, err := te.tasks.CreateTask(ctx, connect.NewRequest(&v1.CreateTaskRequest{
		Name: "cells", TaskType: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, PackageId: f.pkg,
		DeviceIds: []string{"fw-0", "fw-1", "fw-2", "fw-3", "fw-4"},
	}))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.GetTask().GetTaskId()
	list := func(size int32, token string) *v1.ListTaskCellsResponse {
		t.Helper()
		r, err := te.tasks.ListTaskCells(ctx, connect.NewRequest(&v1.ListTaskCellsRequest{TaskId: id, PageSize: size, PageToken: token}))
		if err != nil {
			t.Fatal(err)
		}
		return r.Msg
	}
	// Drive the devices until all five have asked their cells.
	settled := func(cells []*v1.TaskCell) bool {
		n := uint32(0)
		for _, c := range cells {
			n += c.GetTaskHolding() + c.GetTaskWaiting()
		}
		return n == 5
	}
	for end := te.clk.Now().Add(10 * time.Minute); !settled(list(0, "").GetCells()); {
		if !te.step() || te.clk.Now().After(end) {
			t.Fatalf("the devices did not reach their cells: %v", list(0, ""))
		}
	}
	got := list(0, "")
	holderA := got.GetCells()[0].GetHolders()
	if len(holderA) != 1 {
		t.Fatalf("cell-a holders %v, want one", holderA)
	}
	want := &v1.ListTaskCellsResponse{Cells: []*v1.TaskCell{{
		CellId: "cell-a", UnitsInUse: 50, Budget: 50,
		Holders:    []*v1.CellHolder{{DeviceId: holderA[0].GetDeviceId(), Coverage: v1.Coverage_COVERAGE_POOR, Units: 50, TaskId: id}},
		Waiting:    2,
		HoldingMix: &v1.CoverageMix{Poor: 1}, WaitingMix: &v1.CoverageMix{Poor: 2},
		TaskHolding: 1, TaskWaiting: 2, HeadUnits: 50, Saturated: true,
	}, {
		CellId: "cell-b", UnitsInUse: 2, Budget: 50,
		Holders: []*v1.CellHolder{
			{DeviceId: "fw-3", Coverage: v1.Coverage_COVERAGE_GOOD, Units: 1, TaskId: id},
			{DeviceId: "fw-4", Coverage: v1.Coverage_COVERAGE_GOOD, Units: 1, TaskId: id},
		},
		HoldingMix: &v1.CoverageMix{Good: 2}, WaitingMix: &v1.CoverageMix{},
		TaskHolding: 2,
	}}}
	if !proto.Equal(got, want) {
		t.Fatalf("ListTaskCells:\n got %v\nwant %v", got, want)
	}

	// A page at a time.
	p1 := list(1, "")
	if len(p1.GetCells()) != 1 || p1.GetCells()[0].GetCellId() != "cell-a" || p1.GetNextPageToken() != "cell-a" {
		t.Fatalf("first page %v", p1)
	}
	p2 := list(1, p1.GetNextPageToken())
	if len(p2.GetCells()) != 1 || p2.GetCells()[0].GetCellId() != "cell-b" || p2.GetNextPageToken() != "" {
		t.Fatalf("second page %v", p2)
	}

	// Unknown task; bad token.
	_, err = te.tasks.ListTaskCells(ctx, connect.NewRequest(&v1.ListTaskCellsRequest{TaskId: "0123456789abcdef01234567"}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = te.tasks.ListTaskCells(ctx, connect.NewRequest(&v1.ListTaskCellsRequest{TaskId: id, PageToken: "a/b"}))
	wantCode(t, err, connect.CodeInvalidArgument)

	// Once the task has stopped, its devices have left their cells.
	if _, err := te.tasks.StopTask(ctx, connect.NewRequest(&v1.StopTaskRequest{TaskId: id})); err != nil {
		t.Fatal(err)
	}
	te.runTask(t, id, 24*time.Hour)
	if cells := list(0, "").GetCells(); len(cells) != 0 {
		t.Fatalf("a stopped task still has cells: %v", cells)
	}
}
