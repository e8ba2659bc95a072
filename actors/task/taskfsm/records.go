package taskfsm

import (
	"cmp"
	"slices"

	"github.com/otafleet/otafleet/messages"
)

// A State kept as records, so that what a step writes grows with what it
// changed, not with the task's size:
//
//   - the definition, the TaskCreated as journaled (written once);
//   - the header (Header): what is not per sub-task, written when it changes;
//   - a row per sub-task (Row), written when the sub-task changes (Touched).
//     A sub-task without a row is as TaskCreated made it: WAITING, one
//     status change, updated at the creation time, numbered in target order.
//
// FromRecords rebuilds the State; the counters, the index, the queues and
// the started flag's evidence come from the rows.

// Header returns the part of s that is not per sub-task; nil for a task not
// yet created.
func Header(s State) *messages.TaskHeader {
	if s.task == nil {
		return nil
	}
	return &messages.TaskHeader{
		Subtasks:           uint32(len(s.subs)),
		Started:            s.started,
		StopRequested:      s.stopRequested,
		WakeAtUnixNano:     s.wakeAt,
		WakeGeneration:     s.wakeGen,
		CreatedAtUnixNano:  s.createdAt,
		FinishedAtUnixNano: s.finishedAt,
	}
}

// Row returns the sub-task at position pos (in target order) of s.
func Row(s State, pos int) *messages.TaskRow {
	sub := &s.subs[pos]
	return &messages.TaskRow{
		Subtask: &messages.TaskSnapshot_Subtask{
			Status:            sub.status,
			Attempt:           sub.attempt,
			AutoRetries:       sub.autoRetries,
			StatusChanges:     sub.ver,
			Reason:            sub.reason,
			Detail:            sub.detail,
			ResultCode:        sub.resultCode,
			RetryAtUnixNano:   sub.retryAt,
			SourceVersion:     sub.sourceVersion,
			UpdatedAtUnixNano: sub.updatedAt,
			StartedAtUnixNano: sub.startedAt,
			DeviceDescription: sub.deviceDescription,
		},
		Queued: sub.enq,
	}
}

// Touched returns, in increasing order without repeats, the positions of
// the sub-tasks whose rows a step changed: prev is the State the step began
// with, next the one it returned and events the step's events. It names
// every sub-task an event changed (a sub-task an event named but left as it
// was may be listed too); the sub-tasks TaskCreated makes are not listed:
// they are as created. O(events), except a RetryRequested for all sub-tasks,
// which scans them. prev's sub-tasks may have been modified in place by the
// step: only its scalar fields are read.
func Touched(prev, next State, events []*messages.TaskEvent) []int {
	var out []int
	for _, e := range events {
		switch k := e.GetKind().(type) {
		case *messages.TaskEvent_SubtaskStarted:
			out = next.appendPos(out, k.SubtaskStarted.GetDeviceId())
		case *messages.TaskEvent_SubtaskFinished:
			out = next.appendPos(out, k.SubtaskFinished.GetDeviceId())
		case *messages.TaskEvent_RetryRequested:
			if ids := k.RetryRequested.GetDeviceIds(); len(ids) > 0 {
				for _, id := range ids {
					out = next.appendPos(out, id)
				}
				continue
			}
			// Every sub-task the retry re-ran entered WAITING in this step.
			for i := range next.subs {
				if next.subs[i].enq > prev.enqs {
					out = append(out, i)
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (s *State) appendPos(out []int, id string) []int {
	if i, ok := s.index[id]; ok {
		out = append(out, int(i))
	}
	return out
}

// FromRecords rebuilds a State from its records: def (the TaskCreated as
// journaled), h (Header) and rows by position (Row); a position without a
// row (nil, or past the end of rows) is as created. It refuses, with an error wrapping
// ErrInvalidSnapshot, what FromSnapshot refuses (a definition it cannot
// use, an unknown status or reason, a retry time that does not fit the
// status, a started flag the attempts contradict) and: a missing header or
// definition, a header whose number of sub-tasks differs from the
// definition's distinct targets, a row past them, two WAITING sub-tasks
// with the same number. The State shares def: do not modify it afterwards.
func FromRecords(def *messages.TaskCreated, h *messages.TaskHeader, rows []*messages.TaskRow) (State, error) {
	if def == nil || h == nil {
		return State{}, invalidSnapshot("records without a definition or header")
	}
	s := State{
		task:          def,
		started:       h.GetStarted(),
		stopRequested: h.GetStopRequested(),
		wakeAt:        h.GetWakeAtUnixNano(),
		wakeGen:       h.GetWakeGeneration(),
		createdAt:     h.GetCreatedAtUnixNano(),
		finishedAt:    h.GetFinishedAtUnixNano(),
	}
	if err := s.checkTask(); err != nil {
		return State{}, err
	}
	targets := def.GetTargets()
	var ids []string
	s.index, ids = distinctTargets(targets)
	if n := int(h.GetSubtasks()); n != len(ids) {
		return State{}, invalidSnapshot("header counts %d sub-tasks for %d distinct targets", n, len(ids))
	}
	for pos := len(ids); pos < len(rows); pos++ {
		if rows[pos] != nil {
			return State{}, invalidSnapshot("row %d is not a sub-task position (0..%d)", pos, len(ids)-1)
		}
	}
	s.subs = make([]subtask, len(ids))
	var anyAttempt bool
	var waiting []queued
	for i, id := range ids {
		sub := subtask{
			id: id, status: messages.SubtaskStatus_SUBTASK_STATUS_WAITING, ver: 1,
			updatedAt: s.createdAt, enq: uint64(i) + 1,
		}
		if i < len(rows) && rows[i] != nil {
			r := rows[i]
			var err error
			if sub, err = subtaskFromSnapshot(id, r.GetSubtask()); err != nil {
				return State{}, err
			}
			sub.enq = r.GetQueued()
		}
		s.subs[i] = sub
		s.prog.Total++
		s.prog.add(sub.status, 1)
		s.enqs = max(s.enqs, sub.enq)
		anyAttempt = anyAttempt || sub.attempt > 0
		if sub.status == messages.SubtaskStatus_SUBTASK_STATUS_WAITING {
			if sub.enq == 0 {
				return State{}, invalidSnapshot("WAITING sub-task %q has no number", id)
			}
			waiting = append(waiting, queued{at: int64(sub.enq), idx: int32(i), ver: sub.ver})
		}
	}
	switch {
	case anyAttempt && !s.started:
		return State{}, invalidSnapshot("a sub-task has an attempt but started is not set")
	case !anyAttempt && s.started:
		return State{}, invalidSnapshot("started is set but no sub-task has an attempt")
	}
	// The WAITING sub-tasks in the order they entered WAITING; the numbers
	// are carried in queued.at only to sort.
	slices.SortFunc(waiting, func(a, b queued) int { return cmp.Compare(a.at, b.at) })
	order := make([]uint32, len(waiting))
	for k, q := range waiting {
		if k > 0 && q.at == waiting[k-1].at {
			return State{}, invalidSnapshot("WAITING sub-tasks %q and %q have the same number %d", s.subs[waiting[k-1].idx].id, s.subs[q.idx].id, q.at)
		}
		order[k] = uint32(q.idx)
	}
	if err := s.rebuildQueues(order); err != nil {
		return State{}, err
	}
	return s, nil
}
