package taskfsm

import (
	"sort"
	"time"

	"github.com/otafleet/otafleet/messages"
)

// State is one batch task: its definition, one sub-task per target device,
// counters, and its one timer. The zero value is a task not yet created.
//
// State holds slices and a map that Step and Evolve modify in place: keep only
// the State they return, and never use an older copy again.
type State struct {
	task          *messages.TaskCreated // nil until created; read-only
	subs          []subtask             // in target order
	index         map[string]int32      // device ID -> position in subs
	prog          Progress
	started       bool // a sub-task has started at least once
	stopRequested bool
	createdAt     int64 // unix nanos of TaskCreated
	finishedAt    int64 // unix nanos of the event that made the status final; 0 while not final

	wakeAt  int64  // unix nanos of the armed wake; 0: none pending
	wakeGen uint64 // generation of the last WakeArmed

	// enqs counts the entries into WAITING since creation; a sub-task's
	// enq is the number of its latest one, so the WAITING sub-tasks sorted
	// by enq are the valid entries of waiting in order.
	enqs uint64

	// waiting is the FIFO of sub-tasks that entered WAITING; entries whose
	// sub-task has changed status since (ver differs) are stale and skipped.
	// waiting[waitHead] is never stale.
	waiting  []queued
	waitHead int
	// retries holds FAIL_WAIT_RETRY sub-tasks sorted by (retry_at, position),
	// with stale entries skipped the same way; retries[retryHead] is never stale.
	retries   []queued
	retryHead int

	// loc caches the window's time zone. It is not journaled: Step rebuilds
	// it lazily, so a replayed State may have it nil.
	loc *time.Location
}

type subtask struct {
	id          string
	status      messages.SubtaskStatus
	attempt     uint32
	autoRetries uint32 // automatic retries used since creation or the last on-demand retry of a FAIL or STOPPED sub-task
	ver         uint32 // bumped on every status change; validates queue entries
	reason      messages.Reason
	detail      string
	resultCode  int32
	retryAt     int64
	// sourceVersion is the version the last attempt that reached its version
	// check read; updatedAt is when the status last changed and startedAt
	// when the latest attempt started (unix nanos; 0 before the first).
	sourceVersion string
	updatedAt     int64
	startedAt     int64
	// deviceDescription is the description of the MQTT report that ended
	// the last attempt.
	deviceDescription string
	enq               uint64 // number of the latest entry into WAITING (see State.enqs)
}

type queued struct {
	at  int64 // retry_at (retries only)
	idx int32
	ver uint32
}

// Subtask is one device's view inside a task.
type Subtask struct {
	DeviceID string
	Status   messages.SubtaskStatus
	// Attempt is the number of the latest started attempt (0: never started).
	Attempt uint32
	// AutoRetries counts the automatic retries used since creation or the
	// last on-demand retry of the sub-task as FAIL or STOPPED.
	AutoRetries uint32
	// Reason and Detail explain the last outcome (REASON_STOPPED on a stop).
	Reason messages.Reason
	Detail string
	// ResultCode is the device's own code of the last outcome (0 if none).
	ResultCode int32
	// DeviceDescription is the description of the MQTT report that ended
	// the last attempt, as the device sent it ("" if none).
	DeviceDescription string
	// RetryAt is when a FAIL_WAIT_RETRY sub-task runs again; zero otherwise.
	RetryAt time.Time
	// SourceVersion is the version the device ran when an attempt last
	// checked it; "" before any check.
	SourceVersion string
	// UpdatedAt is when the status last changed.
	UpdatedAt time.Time
	// StartedAt is when the latest attempt started (its SubtaskStarted, when
	// StartJob was sent to the device); zero before the first. A retry's
	// attempt replaces it when it starts, not when the retry is requested.
	StartedAt time.Time
}

// Progress counts sub-tasks by status (spec 5.5 TaskProgress).
type Progress struct {
	Total         int
	Waiting       int
	Processing    int
	Success       int
	Fail          int
	FailWaitRetry int
	Stopped       int
}

func (p *Progress) add(st messages.SubtaskStatus, n int) {
	switch st {
	case messages.SubtaskStatus_SUBTASK_STATUS_WAITING:
		p.Waiting += n
	case messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING:
		p.Processing += n
	case messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS:
		p.Success += n
	case messages.SubtaskStatus_SUBTASK_STATUS_FAIL:
		p.Fail += n
	case messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY:
		p.FailWaitRetry += n
	case messages.SubtaskStatus_SUBTASK_STATUS_STOPPED:
		p.Stopped += n
	}
}

// Created reports whether the task exists.
func (s State) Created() bool { return s.task != nil }

// TaskID is the task's identity; "" until created.
func (s State) TaskID() string { return s.task.GetTaskId() }

// Task is the validated definition as journaled (targets de-duplicated in
// order); nil until created. Callers must not modify it.
func (s State) Task() *messages.TaskCreated { return s.task }

// CreatedAt is when the task was created; zero until it is.
func (s State) CreatedAt() time.Time { return messages.Time(s.createdAt) }

// FinishedAt is when the task reached its final status (SUCCESS, FAIL,
// PARTIAL_SUCCESS or STOPPED); zero while it has not (again, after a retry).
func (s State) FinishedAt() time.Time { return messages.Time(s.finishedAt) }

// StopRequested reports whether the task has been stopped.
func (s State) StopRequested() bool { return s.stopRequested }

// Wake returns the armed wake time and its generation; a zero time when no
// wake is pending.
func (s State) Wake() (time.Time, uint64) { return messages.Time(s.wakeAt), s.wakeGen }

// Progress returns the counters; O(1).
func (s State) Progress() Progress { return s.prog }

// Status derives the task status from the counters (spec 5.5); O(1).
// WAITING until the first sub-task has started; after a stop, STOPPING while
// any sub-task is PROCESSING, then STOPPED; otherwise PROCESSING while any
// sub-task is WAITING, PROCESSING or FAIL_WAIT_RETRY, then SUCCESS if all
// succeeded, FAIL if all failed, else PARTIAL_SUCCESS.
func (s State) Status() messages.TaskStatus {
	p := s.prog
	switch {
	case s.task == nil:
		return messages.TaskStatus_TASK_STATUS_UNSPECIFIED
	case s.stopRequested && p.Processing > 0:
		return messages.TaskStatus_TASK_STATUS_STOPPING
	case s.stopRequested:
		return messages.TaskStatus_TASK_STATUS_STOPPED
	case !s.started:
		return messages.TaskStatus_TASK_STATUS_WAITING
	case p.Waiting+p.Processing+p.FailWaitRetry > 0:
		return messages.TaskStatus_TASK_STATUS_PROCESSING
	case p.Success == p.Total:
		return messages.TaskStatus_TASK_STATUS_SUCCESS
	case p.Fail == p.Total:
		return messages.TaskStatus_TASK_STATUS_FAIL
	default:
		return messages.TaskStatus_TASK_STATUS_PARTIAL_SUCCESS
	}
}

func (st *subtask) view() Subtask {
	return Subtask{
		DeviceID:          st.id,
		Status:            st.status,
		Attempt:           st.attempt,
		AutoRetries:       st.autoRetries,
		Reason:            st.reason,
		Detail:            st.detail,
		ResultCode:        st.resultCode,
		DeviceDescription: st.deviceDescription,
		RetryAt:           messages.Time(st.retryAt),
		SourceVersion:     st.sourceVersion,
		UpdatedAt:         messages.Time(st.updatedAt),
		StartedAt:         messages.Time(st.startedAt),
	}
}

// Subtask returns the sub-task of deviceID; false if it is not a target.
func (s State) Subtask(deviceID string) (Subtask, bool) {
	i, ok := s.index[deviceID]
	if !ok {
		return Subtask{}, false
	}
	return s.subs[i].view(), true
}

// Locate returns the position of deviceID's sub-task in target order and
// the sub-task; false if it is not a target. O(1): a read model updates the
// rows a step changed with it.
func (s State) Locate(deviceID string) (int, Subtask, bool) {
	i, ok := s.index[deviceID]
	if !ok {
		return 0, Subtask{}, false
	}
	return int(i), s.subs[i].view(), true
}

// Subtasks returns up to limit sub-tasks in target order starting at
// position offset (0-based), for paging; limit <= 0 means all the rest.
func (s State) Subtasks(offset, limit int) []Subtask {
	if offset < 0 {
		offset = 0
	}
	if offset >= len(s.subs) {
		return nil
	}
	end := len(s.subs)
	if limit > 0 && offset+limit < end {
		end = offset + limit
	}
	out := make([]Subtask, 0, end-offset)
	for i := offset; i < end; i++ {
		out = append(out, s.subs[i].view())
	}
	return out
}

// setStatus moves sub-task i to st, keeping the counters and the queues'
// head invariants.
func (s *State) setStatus(i int32, st messages.SubtaskStatus, at int64) {
	sub := &s.subs[i]
	sub.updatedAt = at
	s.prog.add(sub.status, -1)
	s.prog.add(st, 1)
	sub.status = st
	sub.ver++
	switch st {
	case messages.SubtaskStatus_SUBTASK_STATUS_WAITING:
		s.enqs++
		sub.enq = s.enqs
		s.waiting = append(s.waiting, queued{idx: i, ver: sub.ver})
	case messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY:
		s.insertRetry(queued{at: sub.retryAt, idx: i, ver: sub.ver})
	}
	s.trim()
}

func (s *State) waitingValid(q queued) bool {
	sub := &s.subs[q.idx]
	return sub.ver == q.ver && sub.status == messages.SubtaskStatus_SUBTASK_STATUS_WAITING
}

func (s *State) retryValid(q queued) bool {
	sub := &s.subs[q.idx]
	return sub.ver == q.ver && sub.status == messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY
}

func (s *State) insertRetry(q queued) {
	tail := s.retries[s.retryHead:]
	n := sort.Search(len(tail), func(k int) bool {
		e := tail[k]
		return e.at > q.at || (e.at == q.at && e.idx > q.idx)
	})
	pos := s.retryHead + n
	s.retries = append(s.retries, queued{})
	copy(s.retries[pos+1:], s.retries[pos:])
	s.retries[pos] = q
}

// trim drops stale entries at the queue heads and compacts the slices; it
// is deterministic, so live and replayed states stay identical.
func (s *State) trim() {
	for s.waitHead < len(s.waiting) && !s.waitingValid(s.waiting[s.waitHead]) {
		s.waitHead++
	}
	s.waiting, s.waitHead = compact(s.waiting, s.waitHead)
	for s.retryHead < len(s.retries) && !s.retryValid(s.retries[s.retryHead]) {
		s.retryHead++
	}
	s.retries, s.retryHead = compact(s.retries, s.retryHead)
}

func compact(q []queued, head int) ([]queued, int) {
	switch {
	case head == len(q):
		return q[:0], 0
	case head >= 1024 && 2*head >= len(q):
		n := copy(q, q[head:])
		return q[:n], 0
	}
	return q, head
}

// nextRetryAt is the earliest retry_at of a FAIL_WAIT_RETRY sub-task.
func (s *State) nextRetryAt() (int64, bool) {
	if s.retryHead < len(s.retries) {
		return s.retries[s.retryHead].at, true
	}
	return 0, false
}
