package rpc

import (
	"context"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// ListTaskCells answers the cells where the task's devices hold or wait for
// slots, from the views the cell actors publish after each step (never
// asking a cell actor, which may be busy admitting a queue).
func (s *taskServer) ListTaskCells(ctx context.Context, req *connect.Request[v1.ListTaskCellsRequest]) (*connect.Response[v1.ListTaskCellsResponse], error) {
	m := req.Msg
	id := m.GetTaskId()
	if err := checkPageToken(m.GetPageToken()); err != nil {
		return nil, err
	}
	if _, _, err := s.task(ctx, "ListTaskCells", id); err != nil {
		return nil, err
	}
	limit := persistence.ListLimit(int(m.GetPageSize()))
	cells := s.engine.TaskCells(id, m.GetPageToken(), limit+1)
	out := &v1.ListTaskCellsResponse{}
	if len(cells) > limit {
		cells = cells[:limit]
		out.NextPageToken = cells[limit-1].CellID
	}
	out.Cells = make([]*v1.TaskCell, len(cells))
	for i, c := range cells {
		out.Cells[i] = taskCellToProto(id, c)
	}
	return connect.NewResponse(out), nil
}

func taskCellToProto(taskID string, c *actors.CellView) *v1.TaskCell {
	out := &v1.TaskCell{
		CellId:      c.CellID,
		UnitsInUse:  c.InUse,
		Budget:      c.Budget,
		Waiting:     c.Waiting,
		HoldingMix:  mixToProto(c.HoldingMix),
		WaitingMix:  mixToProto(c.WaitingMix),
		TaskHolding: c.TaskHolding[taskID],
		TaskWaiting: c.TaskWaiting[taskID],
		HeadUnits:   c.HeadUnits,
		Saturated:   c.Saturated(),
		Holders:     make([]*v1.CellHolder, len(c.Holders)),
	}
	for i, h := range c.Holders {
		out.Holders[i] = &v1.CellHolder{DeviceId: h.DeviceID, Coverage: coverageToProto(h.Level), Units: h.Units, TaskId: h.TaskID}
	}
	return out
}

func mixToProto(m actors.CoverageMix) *v1.CoverageMix {
	return &v1.CoverageMix{Good: m.Good, Medium: m.Medium, Poor: m.Poor, CellOnly: m.CellOnly}
}

// coverageToProto maps a cell's coverage level; an unknown one costs as
// much as a poor one (cellfsm.Cost) and shows as poor.
func coverageToProto(l messages.CoverageLevel) v1.Coverage {
	switch l {
	case messages.CoverageLevel_COVERAGE_LEVEL_GOOD:
		return v1.Coverage_COVERAGE_GOOD
	case messages.CoverageLevel_COVERAGE_LEVEL_MEDIUM:
		return v1.Coverage_COVERAGE_MEDIUM
	case messages.CoverageLevel_COVERAGE_LEVEL_CELL_ONLY:
		return v1.Coverage_COVERAGE_CELL_ONLY
	}
	return v1.Coverage_COVERAGE_POOR
}
