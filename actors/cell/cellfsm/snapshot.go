package cellfsm

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/otafleet/otafleet/messages"
)

// ErrInvalidSnapshot: FromSnapshot was given a snapshot that is not a cell
// state (a missing cell ID, an unknown level, a device twice, units in use
// that are not the sum of the holders' costs).
var ErrInvalidSnapshot = errors.New("cellfsm: invalid snapshot")

// Snapshot encodes the complete state s: holders sorted by device ID, the
// queue head first. Equal states give equal bytes (no proto map is used).
func Snapshot(s State) *messages.CellSnapshot {
	p := &messages.CellSnapshot{
		CellId:  s.Cell,
		Holders: make([]*messages.CellSnapshot_Member, 0, len(s.Slots)),
		Queue:   make([]*messages.CellSnapshot_Member, 0, len(s.Queue)),
		InUse:   s.InUse,
	}
	for _, id := range slices.Sorted(maps.Keys(s.Slots)) {
		h := s.Slots[id]
		p.Holders = append(p.Holders, &messages.CellSnapshot_Member{DeviceId: id, Level: h.Level, Cost: h.Cost, TaskId: h.Job.TaskID, Attempt: h.Job.Attempt})
	}
	for _, w := range s.Queue {
		p.Queue = append(p.Queue, &messages.CellSnapshot_Member{DeviceId: w.DeviceID, Level: w.Level, Cost: w.Cost, TaskId: w.Job.TaskID, Attempt: w.Job.Attempt})
	}
	return p
}

// FromSnapshot decodes a snapshot made by Snapshot. It checks the invariants
// of State.Check that need no config (every device ID non-empty and known
// once among the holders and once in the queue, a device in both waiting
// for more than it holds; every cost at least 1; in_use the sum of the
// holders' costs), that holders are sorted, that every level is a known
// CoverageLevel and that the cell ID is set; a violation is an error
// wrapping ErrInvalidSnapshot. The budget is not checked: a state may
// exceed a budget lowered since (see the package doc), and Admit or Step
// under the current config take it from there.
func FromSnapshot(p *messages.CellSnapshot) (State, error) {
	if p == nil {
		return State{}, invalidSnapshot("snapshot is nil")
	}
	if p.GetCellId() == "" {
		return State{}, invalidSnapshot("cell_id is empty")
	}
	s := New(p.GetCellId())
	s.InUse = p.GetInUse()
	var sum uint64
	prev := ""
	for i, m := range p.GetHolders() {
		where := fmt.Sprintf("holders[%d]", i)
		if err := checkMember(where, m); err != nil {
			return State{}, err
		}
		id := m.GetDeviceId()
		switch {
		case id == prev:
			return State{}, invalidSnapshot("%s: device %q holds twice", where, id)
		case id < prev:
			return State{}, invalidSnapshot("%s: device %q is out of order (holders are sorted by device ID)", where, id)
		}
		prev = id
		s.Slots[id] = Slot{Level: m.GetLevel(), Cost: m.GetCost(), Job: memberJob(m)}
		sum += uint64(m.GetCost())
	}
	if sum != uint64(s.InUse) {
		return State{}, invalidSnapshot("in_use %d is not the sum of the holders' costs %d", s.InUse, sum)
	}
	if len(p.GetQueue()) > 0 {
		s.Queue = make([]Waiter, 0, len(p.GetQueue()))
	}
	seen := make(map[string]bool, len(p.GetQueue()))
	for i, m := range p.GetQueue() {
		where := fmt.Sprintf("queue[%d]", i)
		if err := checkMember(where, m); err != nil {
			return State{}, err
		}
		id := m.GetDeviceId()
		if h, ok := s.Slots[id]; ok && m.GetCost() <= h.Cost {
			return State{}, invalidSnapshot("%s: device %q holds %d units and waits for %d", where, id, h.Cost, m.GetCost())
		}
		if seen[id] {
			return State{}, invalidSnapshot("%s: device %q waits twice", where, id)
		}
		seen[id] = true
		s.Queue = append(s.Queue, Waiter{DeviceID: id, Level: m.GetLevel(), Cost: m.GetCost(), Job: memberJob(m)})
	}
	return s, nil
}

func memberJob(m *messages.CellSnapshot_Member) Job {
	return Job{TaskID: m.GetTaskId(), Attempt: m.GetAttempt()}
}

func checkMember(where string, m *messages.CellSnapshot_Member) error {
	if m.GetDeviceId() == "" {
		return invalidSnapshot("%s: device_id is empty", where)
	}
	if m.GetCost() == 0 {
		return invalidSnapshot("%s: device %q has cost 0", where, m.GetDeviceId())
	}
	if _, ok := messages.CoverageLevel_name[int32(m.GetLevel())]; !ok {
		return invalidSnapshot("%s: device %q has unknown level %d", where, m.GetDeviceId(), m.GetLevel())
	}
	return nil
}

func invalidSnapshot(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidSnapshot}, args...)...)
}
