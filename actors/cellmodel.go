package actors

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/otafleet/otafleet/actors/cell/cellfsm"
	"github.com/otafleet/otafleet/messages"
)

// CoverageMix counts devices by coverage level.
type CoverageMix struct {
	Good, Medium, Poor, CellOnly uint32
}

func (m *CoverageMix) add(l messages.CoverageLevel) {
	switch l {
	case messages.CoverageLevel_COVERAGE_LEVEL_GOOD:
		m.Good++
	case messages.CoverageLevel_COVERAGE_LEVEL_MEDIUM:
		m.Medium++
	case messages.CoverageLevel_COVERAGE_LEVEL_CELL_ONLY:
		m.CellOnly++
	default: // poor, and what costs as much (cellfsm.Cost)
		m.Poor++
	}
}

// CellHolder is a device holding units of a cell's budget.
type CellHolder struct {
	DeviceID string
	Level    messages.CoverageLevel
	Units    uint32
	TaskID   string
}

// CellView is a cell's budget as its actor published it after its last
// step: the units in use and the budget, the holders (in device ID order;
// at most the budget's worth), the queue's length, head and coverage mix,
// and, per task, how many of the holders and of the queue are its.
type CellView struct {
	CellID     string
	InUse      uint32
	Budget     uint32
	Holders    []CellHolder
	HoldingMix CoverageMix
	Waiting    uint32
	WaitingMix CoverageMix
	// HeadUnits is what the head of the queue needs beyond what it holds
	// (0 when nobody waits).
	HeadUnits uint32
	// TaskHolding and TaskWaiting count holders and waiters by task ID.
	TaskHolding, TaskWaiting map[string]uint32
}

// Saturated reports a cell that paces its queue: devices wait and the head
// does not fit the budget left.
func (v CellView) Saturated() bool {
	return v.Waiting > 0 && uint64(v.InUse)+uint64(v.HeadUnits) > uint64(v.Budget)
}

// cellViewOf summarizes s. It scans the holders and the queue once, as a
// cell step does (cellfsm finds a device in the queue by a scan too).
func cellViewOf(s cellfsm.State, budget uint32) *CellView {
	v := &CellView{CellID: s.Cell, InUse: s.InUse, Budget: budget, Waiting: uint32(len(s.Queue))}
	if len(s.Slots) > 0 {
		v.Holders = make([]CellHolder, 0, len(s.Slots))
		v.TaskHolding = map[string]uint32{}
	}
	for id, sl := range s.Slots {
		v.Holders = append(v.Holders, CellHolder{DeviceID: id, Level: sl.Level, Units: sl.Cost, TaskID: sl.Job.TaskID})
		v.HoldingMix.add(sl.Level)
		v.TaskHolding[sl.Job.TaskID]++
	}
	slices.SortFunc(v.Holders, func(a, b CellHolder) int {
		switch {
		case a.DeviceID < b.DeviceID:
			return -1
		case a.DeviceID > b.DeviceID:
			return 1
		}
		return 0
	})
	if len(s.Queue) > 0 {
		v.TaskWaiting = map[string]uint32{}
		head := s.Queue[0]
		// A holder waiting for a new job's higher cost needs the difference
		// (cellfsm's admission rule); a cost above the budget counts as
		// the whole budget.
		need := min(head.Cost, budget)
		if h, ok := s.Slots[head.DeviceID]; ok {
			need -= min(h.Cost, need)
		}
		v.HeadUnits = need
	}
	// Runs of one task's waiters are counted before touching the map: a
	// queue is mostly long runs of one campaign, so this costs a compare
	// per waiter rather than a map update.
	run, runTask := uint32(0), ""
	for i := range s.Queue {
		w := &s.Queue[i]
		v.WaitingMix.add(w.Level)
		if w.Job.TaskID != runTask {
			if run > 0 {
				v.TaskWaiting[runTask] += run
			}
			run, runTask = 0, w.Job.TaskID
		}
		run++
	}
	if run > 0 {
		v.TaskWaiting[runTask] += run
	}
	return v
}

// cellModels are the published views of the live cells that hold or queue
// devices, by cell ID. A cell's actor is the only writer of its entry: it
// publishes after each step and on activation, and removes the entry when
// it stops or has nobody left. A view is immutable once published; readers
// share it.
type cellModels struct {
	mu sync.RWMutex
	m  map[string]*CellView
}

func newCellModels() *cellModels { return &cellModels{m: map[string]*CellView{}} }

// publish makes s the view of its cell; an idle cell has none.
func (ms *cellModels) publish(s cellfsm.State, budget uint32) {
	if len(s.Slots) == 0 && len(s.Queue) == 0 {
		ms.drop(s.Cell)
		return
	}
	v := cellViewOf(s, budget)
	ms.mu.Lock()
	ms.m[s.Cell] = v
	ms.mu.Unlock()
}

func (ms *cellModels) drop(cellID string) {
	ms.mu.Lock()
	delete(ms.m, cellID)
	ms.mu.Unlock()
}

// TaskCells returns the views of the cells where task taskID has devices
// holding or waiting, in cell ID order, those after cell ID after ("" from
// the first), at most limit of them (limit <= 0: all). The views are read
// from what each cell's actor published after its last step, without asking
// the actors. In a cluster every member is asked for the views of its live
// cells (a member that does not answer within clusterCellsWait is left
// out: the page lacks its cells).
func (e *Engine) TaskCells(taskID, after string, limit int) []*CellView {
	out := e.localTaskCells(taskID, after, limit)
	st, ok := e.Cluster()
	if !ok || len(st.Members) < 2 {
		return out
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterCellsWait)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, addr := range st.Members {
		if addr == st.Self {
			continue
		}
		wg.Go(func() {
			r, err := e.node.request(ctx, addr, &messages.ClusterRequest{Request: &messages.ClusterRequest_Node{
				Node: &messages.NodeQuery{CellsOfTask: taskID, After: after, Limit: uint32(max(limit, 0))}}})
			if err == nil {
				err = replyErr(r)
			}
			if err != nil {
				e.log.Debug("cluster: a member's cell views are missing from a page", "node", addr, "error", err)
				return
			}
			mu.Lock()
			for _, w := range r.GetCells() {
				out = append(out, cellViewFromWire(w))
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	return sortCells(out, limit)
}

// clusterCellsWait bounds TaskCells' questions to the other members.
const clusterCellsWait = 5 * time.Second

// localTaskCells is TaskCells over this engine's live cells.
func (e *Engine) localTaskCells(taskID, after string, limit int) []*CellView {
	var out []*CellView
	e.cellModels.mu.RLock()
	for id, v := range e.cellModels.m {
		if id <= after && after != "" {
			continue
		}
		if v.TaskHolding[taskID] > 0 || v.TaskWaiting[taskID] > 0 {
			out = append(out, v)
		}
	}
	e.cellModels.mu.RUnlock()
	return sortCells(out, limit)
}

// sortCells sorts views by cell ID and keeps the first limit (<= 0: all).
func sortCells(out []*CellView, limit int) []*CellView {
	slices.SortFunc(out, func(a, b *CellView) int {
		switch {
		case a.CellID < b.CellID:
			return -1
		case a.CellID > b.CellID:
			return 1
		}
		return 0
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}
