package taskfsm

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/otafleet/otafleet/messages"
)

// ErrInvalidSnapshot: FromSnapshot was given a snapshot that is not a task
// state (a missing field, an unknown enum value, sub-tasks that do not match
// the targets, counters or a waiting order that do not match the sub-tasks).
var ErrInvalidSnapshot = errors.New("taskfsm: invalid snapshot")

// Snapshot encodes the complete state s: the task definition, every
// sub-task, the counters, the wake and the order of the waiting queue. The
// retry list, the device index and the time zone cache are derived and
// rebuilt by FromSnapshot; stale queue entries are left out, so states that
// differ only in them encode the same. The waiting order is kept, not the
// numbers of the entries into WAITING: FromSnapshot numbers the WAITING
// sub-tasks 1, 2, ... in that order. Whole-task snapshots are the form of
// older stores; a task keeps its state as records now (see Header). The snapshot shares the task
// definition with s: treat it as read-only (marshal it).
func Snapshot(s State) *messages.TaskSnapshot {
	if s.task == nil {
		return &messages.TaskSnapshot{}
	}
	p := &messages.TaskSnapshot{
		Task:     s.task,
		Subtasks: make([]*messages.TaskSnapshot_Subtask, len(s.subs)),
		Progress: &messages.TaskSnapshot_Progress{
			Total:         uint32(s.prog.Total),
			Waiting:       uint32(s.prog.Waiting),
			Processing:    uint32(s.prog.Processing),
			Success:       uint32(s.prog.Success),
			Fail:          uint32(s.prog.Fail),
			FailWaitRetry: uint32(s.prog.FailWaitRetry),
			Stopped:       uint32(s.prog.Stopped),
		},
		Started:            s.started,
		StopRequested:      s.stopRequested,
		WakeAtUnixNano:     s.wakeAt,
		WakeGeneration:     s.wakeGen,
		Waiting:            make([]uint32, 0, s.prog.Waiting),
		CreatedAtUnixNano:  s.createdAt,
		FinishedAtUnixNano: s.finishedAt,
	}
	for i := range s.subs {
		sub := &s.subs[i]
		p.Subtasks[i] = &messages.TaskSnapshot_Subtask{
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
		}
	}
	for _, q := range s.waiting[s.waitHead:] {
		if s.waitingValid(q) {
			p.Waiting = append(p.Waiting, uint32(q.idx))
		}
	}
	return p
}

// FromSnapshot decodes a snapshot made by Snapshot and rebuilds the derived
// structures. It refuses, with an error wrapping ErrInvalidSnapshot: a nil
// snapshot; fields set without a task; a task without ID, with unknown enum
// values or an unusable window; sub-tasks that are not one per distinct
// target; an unknown or unset sub-task status or reason; a retry time on a
// sub-task that is not FAIL_WAIT_RETRY, or none on one that is; counters
// that differ from a recount; a waiting order that does not list each
// WAITING sub-task exactly once; a started flag that disagrees with the
// sub-tasks' attempts. The returned State shares p's task definition: do
// not modify p afterwards.
func FromSnapshot(p *messages.TaskSnapshot) (State, error) {
	if p == nil {
		return State{}, invalidSnapshot("snapshot is nil")
	}
	task := p.GetTask()
	if task == nil {
		if len(p.GetSubtasks()) > 0 || p.GetProgress() != nil || p.GetStarted() || p.GetStopRequested() ||
			p.GetWakeAtUnixNano() != 0 || p.GetWakeGeneration() != 0 || len(p.GetWaiting()) > 0 ||
			p.GetCreatedAtUnixNano() != 0 || p.GetFinishedAtUnixNano() != 0 {
			return State{}, invalidSnapshot("fields set without a task")
		}
		return State{}, nil
	}
	s := State{
		task:          task,
		started:       p.GetStarted(),
		stopRequested: p.GetStopRequested(),
		wakeAt:        p.GetWakeAtUnixNano(),
		wakeGen:       p.GetWakeGeneration(),
		createdAt:     p.GetCreatedAtUnixNano(),
		finishedAt:    p.GetFinishedAtUnixNano(),
	}
	if err := s.checkTask(); err != nil {
		return State{}, err
	}
	// One sub-task per distinct target, as evolveCreated builds them.
	targets := task.GetTargets()
	var ids []string
	s.index, ids = distinctTargets(targets)
	if n := len(p.GetSubtasks()); n != len(ids) {
		return State{}, invalidSnapshot("%d sub-tasks for %d distinct targets", n, len(ids))
	}
	s.subs = make([]subtask, len(ids))
	var anyAttempt bool
	for i, ps := range p.GetSubtasks() {
		sub, err := subtaskFromSnapshot(ids[i], ps)
		if err != nil {
			return State{}, err
		}
		s.subs[i] = sub
		s.prog.Total++
		s.prog.add(sub.status, 1)
		anyAttempt = anyAttempt || sub.attempt > 0
	}
	switch {
	case anyAttempt && !s.started:
		return State{}, invalidSnapshot("a sub-task has an attempt but started is not set")
	case !anyAttempt && s.started:
		return State{}, invalidSnapshot("started is set but no sub-task has an attempt")
	}
	if got := progressFromSnapshot(p.GetProgress()); got != s.prog {
		return State{}, invalidSnapshot("progress %+v does not match the sub-tasks %+v", got, s.prog)
	}
	if err := s.rebuildQueues(p.GetWaiting()); err != nil {
		return State{}, err
	}
	// The snapshot keeps the waiting order, not the numbers.
	for k, q := range s.waiting {
		s.subs[q.idx].enq = uint64(k) + 1
	}
	s.enqs = uint64(len(s.waiting))
	return s, nil
}

func invalidSnapshot(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidSnapshot}, args...)...)
}

func known[E ~int32](names map[int32]string, v E) bool {
	_, ok := names[int32(v)]
	return ok
}

// checkTask checks what Step relies on in the journaled definition and
// loads the window's time zone into the cache.
func (s *State) checkTask() error {
	t := s.task
	switch {
	case t.GetTaskId() == "":
		return invalidSnapshot("task.task_id is empty")
	case !known(messages.TaskType_name, t.GetTaskType()):
		return invalidSnapshot("task.task_type %d is unknown", t.GetTaskType())
	case !known(messages.Protocol_name, t.GetProtocol()):
		return invalidSnapshot("task.protocol %d is unknown", t.GetProtocol())
	case len(t.GetTargets()) > math.MaxInt32:
		return invalidSnapshot("task has %d targets", len(t.GetTargets()))
	}
	if w := t.GetPolicy().GetWindow(); w != nil {
		if w.GetStartMinute() >= minutesPerDay || w.GetEndMinute() >= minutesPerDay {
			return invalidSnapshot("task.policy.window %d..%d is not within 0..%d", w.GetStartMinute(), w.GetEndMinute(), minutesPerDay-1)
		}
		loc, err := loadZone(w.GetTimeZone())
		if err != nil {
			return invalidSnapshot("task.policy.window.time_zone %q: %v", w.GetTimeZone(), err)
		}
		s.loc = loc
	}
	return nil
}

func subtaskFromSnapshot(id string, p *messages.TaskSnapshot_Subtask) (subtask, error) {
	st := p.GetStatus()
	switch {
	case p == nil:
		return subtask{}, invalidSnapshot("sub-task %q is empty", id)
	case st == messages.SubtaskStatus_SUBTASK_STATUS_UNSPECIFIED || !known(messages.SubtaskStatus_name, st):
		return subtask{}, invalidSnapshot("sub-task %q has status %v", id, st)
	case !known(messages.Reason_name, p.GetReason()):
		return subtask{}, invalidSnapshot("sub-task %q has unknown reason %d", id, p.GetReason())
	case (st == messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY) != (p.GetRetryAtUnixNano() != 0):
		return subtask{}, invalidSnapshot("sub-task %q is %v with retry_at %d", id, st, p.GetRetryAtUnixNano())
	}
	return subtask{
		id:                id,
		status:            st,
		attempt:           p.GetAttempt(),
		autoRetries:       p.GetAutoRetries(),
		ver:               p.GetStatusChanges(),
		reason:            p.GetReason(),
		detail:            p.GetDetail(),
		resultCode:        p.GetResultCode(),
		retryAt:           p.GetRetryAtUnixNano(),
		sourceVersion:     p.GetSourceVersion(),
		updatedAt:         p.GetUpdatedAtUnixNano(),
		startedAt:         p.GetStartedAtUnixNano(),
		deviceDescription: p.GetDeviceDescription(),
	}, nil
}

func progressFromSnapshot(p *messages.TaskSnapshot_Progress) Progress {
	return Progress{
		Total:         int(p.GetTotal()),
		Waiting:       int(p.GetWaiting()),
		Processing:    int(p.GetProcessing()),
		Success:       int(p.GetSuccess()),
		Fail:          int(p.GetFail()),
		FailWaitRetry: int(p.GetFailWaitRetry()),
		Stopped:       int(p.GetStopped()),
	}
}

// rebuildQueues rebuilds the waiting FIFO from its order in the snapshot
// and the retry list from the sub-tasks, both without stale entries.
func (s *State) rebuildQueues(order []uint32) error {
	if len(order) != s.prog.Waiting {
		return invalidSnapshot("waiting lists %d sub-tasks, %d are WAITING", len(order), s.prog.Waiting)
	}
	s.waiting = make([]queued, 0, len(order))
	seen := make([]bool, len(s.subs))
	for k, pos := range order {
		if uint64(pos) >= uint64(len(s.subs)) {
			return invalidSnapshot("waiting[%d] = %d is not a sub-task position (0..%d)", k, pos, len(s.subs)-1)
		}
		sub := &s.subs[pos]
		if sub.status != messages.SubtaskStatus_SUBTASK_STATUS_WAITING {
			return invalidSnapshot("waiting[%d]: sub-task %q is %v", k, sub.id, sub.status)
		}
		if seen[pos] {
			return invalidSnapshot("waiting[%d]: sub-task %q is listed twice", k, sub.id)
		}
		seen[pos] = true
		s.waiting = append(s.waiting, queued{idx: int32(pos), ver: sub.ver})
	}
	s.retries = make([]queued, 0, s.prog.FailWaitRetry)
	for i := range s.subs {
		if sub := &s.subs[i]; sub.status == messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY {
			s.retries = append(s.retries, queued{at: sub.retryAt, idx: int32(i), ver: sub.ver})
		}
	}
	slices.SortFunc(s.retries, func(a, b queued) int {
		return cmp.Or(cmp.Compare(a.at, b.at), cmp.Compare(a.idx, b.idx))
	})
	return nil
}

// distinctTargets numbers a task's distinct targets in their order, as
// evolveCreated does: the index of each device ID, and the IDs by number.
func distinctTargets(targets []string) (map[string]int32, []string) {
	index := make(map[string]int32, len(targets))
	ids := make([]string, 0, len(targets))
	for _, id := range targets {
		if _, dup := index[id]; !dup {
			index[id] = int32(len(ids))
			ids = append(ids, id)
		}
	}
	return index, ids
}
