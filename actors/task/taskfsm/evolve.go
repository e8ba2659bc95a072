package taskfsm

import (
	"github.com/otafleet/otafleet/messages"
)

// Evolve applies one journaled event to s and returns the new state. It is
// total: a nil or unknown event, or one that does not fit the state (an
// unknown device, a second TaskCreated), leaves s unchanged. Every event
// costs amortised O(1), except TaskCreated and RetryRequested, which touch
// the sub-tasks they name (all of them for a retry of "all"). A retry time
// goes into a sorted list by binary search; with one interval per task retry
// times arrive in order, so the insertion is an append.
func Evolve(s State, e *messages.TaskEvent) State {
	at := e.GetAtUnixNano()
	switch k := e.GetKind().(type) {
	case *messages.TaskEvent_Created:
		s.evolveCreated(k.Created, at)
	case *messages.TaskEvent_SubtaskStarted:
		s.evolveStarted(k.SubtaskStarted, at)
	case *messages.TaskEvent_SubtaskFinished:
		s.evolveFinished(k.SubtaskFinished, at)
	case *messages.TaskEvent_StopRequested:
		if s.task != nil && k.StopRequested != nil {
			s.stopRequested = true
			s.wakeAt = 0 // a stopped task needs no wake; a later fire is stale
		}
	case *messages.TaskEvent_RetryRequested:
		s.evolveRetry(k.RetryRequested, at)
	case *messages.TaskEvent_WakeArmed:
		if s.task != nil && k.WakeArmed != nil {
			s.wakeAt = k.WakeArmed.GetAtUnixNano()
			s.wakeGen = k.WakeArmed.GetGeneration()
		}
	}
	if s.task != nil {
		switch done := s.Status().Final(); {
		case done && s.finishedAt == 0:
			s.finishedAt = at
		case !done:
			s.finishedAt = 0 // a retry reopened it
		}
	}
	return s
}

func (s *State) evolveCreated(c *messages.TaskCreated, at int64) {
	if s.task != nil || c == nil {
		return
	}
	s.task = c
	s.createdAt = at
	s.subs = make([]subtask, 0, len(c.GetTargets()))
	s.index = make(map[string]int32, len(c.GetTargets()))
	s.waiting = make([]queued, 0, len(c.GetTargets()))
	for _, id := range c.GetTargets() {
		if _, dup := s.index[id]; dup {
			continue
		}
		i := int32(len(s.subs))
		s.index[id] = i
		s.subs = append(s.subs, subtask{id: id})
		s.prog.Total++
		s.setStatus(i, messages.SubtaskStatus_SUBTASK_STATUS_WAITING, at)
	}
}

func (s *State) lookup(id string) (int32, bool) {
	i, ok := s.index[id]
	return i, ok
}

func (s *State) evolveStarted(e *messages.SubtaskStarted, at int64) {
	i, ok := s.lookup(e.GetDeviceId())
	if !ok {
		return
	}
	sub := &s.subs[i]
	sub.attempt = e.GetAttempt()
	sub.startedAt = at
	sub.reason = messages.Reason_REASON_NONE
	sub.detail = ""
	sub.deviceDescription = ""
	sub.retryAt = 0
	s.started = true
	s.setStatus(i, messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING, at)
}

func (s *State) evolveFinished(e *messages.SubtaskFinished, at int64) {
	i, ok := s.lookup(e.GetDeviceId())
	if !ok {
		return
	}
	st := e.GetStatus()
	switch st {
	case messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS,
		messages.SubtaskStatus_SUBTASK_STATUS_FAIL,
		messages.SubtaskStatus_SUBTASK_STATUS_STOPPED:
	case messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY:
		s.subs[i].autoRetries++
	default:
		return
	}
	sub := &s.subs[i]
	sub.reason = e.GetReason()
	sub.detail = e.GetDetail()
	sub.resultCode = e.GetResultCode()
	sub.deviceDescription = e.GetDeviceDescription()
	if v := e.GetSourceVersion(); v != "" {
		sub.sourceVersion = v // an attempt that ended before its version check keeps the last one known
	}
	sub.retryAt = 0
	if st == messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY {
		sub.retryAt = e.GetRetryAtUnixNano()
	}
	s.setStatus(i, st, at)
}

// retryable: the sub-task statuses an on-demand retry re-runs (spec 5.4).
func retryable(st messages.SubtaskStatus) bool {
	switch st {
	case messages.SubtaskStatus_SUBTASK_STATUS_FAIL,
		messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY,
		messages.SubtaskStatus_SUBTASK_STATUS_STOPPED:
		return true
	}
	return false
}

func (s *State) evolveRetry(e *messages.RetryRequested, at int64) {
	if s.task == nil || e == nil {
		return
	}
	reset := func(i int32) {
		sub := &s.subs[i]
		if !retryable(sub.status) {
			return
		}
		if !e.GetKeepPendingRetries() || sub.status != messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY {
			sub.autoRetries = 0
		}
		sub.reason = messages.Reason_REASON_NONE
		sub.detail = ""
		sub.deviceDescription = ""
		sub.retryAt = 0
		s.setStatus(i, messages.SubtaskStatus_SUBTASK_STATUS_WAITING, at)
	}
	if len(e.GetDeviceIds()) == 0 {
		for i := range s.subs {
			reset(int32(i))
		}
		return
	}
	for _, id := range e.GetDeviceIds() {
		if i, ok := s.lookup(id); ok {
			reset(i)
		}
	}
}
