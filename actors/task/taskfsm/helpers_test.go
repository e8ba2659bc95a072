package taskfsm

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/otafleet/otafleet/messages"
)

// cloneState deep-copies s (the time zone cache is dropped), so that a Step
// on the original cannot change the copy.
func cloneState(s State) State {
	c := s
	c.loc = nil
	if s.subs != nil {
		c.subs = make([]subtask, len(s.subs), cap(s.subs))
		copy(c.subs, s.subs)
	}
	if s.index != nil {
		c.index = maps.Clone(s.index)
	}
	if s.waiting != nil {
		c.waiting = make([]queued, len(s.waiting), cap(s.waiting))
		copy(c.waiting, s.waiting)
	}
	if s.retries != nil {
		c.retries = make([]queued, len(s.retries), cap(s.retries))
		copy(c.retries, s.retries)
	}
	return c
}

// sameState compares two states, ignoring the time zone cache. The task
// definition is compared by identity (both fold the same journaled event);
// the big sub-task slice and index are compared directly, the rest with
// reflect.DeepEqual so that a new field is never left out.
func sameState(a, b State) bool {
	if a.task != b.task || !slices.Equal(a.subs, b.subs) || !maps.Equal(a.index, b.index) {
		return false
	}
	a.loc, b.loc = nil, nil
	a.task, b.task = nil, nil
	a.subs, b.subs = nil, nil
	a.index, b.index = nil, nil
	return reflect.DeepEqual(a, b)
}

func fold(s State, events []*messages.TaskEvent) State {
	for _, e := range events {
		s = Evolve(s, e)
	}
	return s
}

// recount scans all sub-tasks.
func recount(s State) Progress {
	var p Progress
	for i := range s.subs {
		p.Total++
		p.add(s.subs[i].status, 1)
	}
	return p
}

// deriveStatus is spec 5.5 computed by a full scan.
func deriveStatus(s State) messages.TaskStatus {
	if s.task == nil {
		return messages.TaskStatus_TASK_STATUS_UNSPECIFIED
	}
	any := func(sts ...messages.SubtaskStatus) bool {
		for i := range s.subs {
			for _, st := range sts {
				if s.subs[i].status == st {
					return true
				}
			}
		}
		return false
	}
	all := func(st messages.SubtaskStatus) bool {
		for i := range s.subs {
			if s.subs[i].status != st {
				return false
			}
		}
		return true
	}
	startedOnce := false
	for i := range s.subs {
		if s.subs[i].attempt > 0 {
			startedOnce = true
		}
	}
	switch {
	case s.stopRequested && any(messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING):
		return messages.TaskStatus_TASK_STATUS_STOPPING
	case s.stopRequested:
		return messages.TaskStatus_TASK_STATUS_STOPPED
	case !startedOnce:
		return messages.TaskStatus_TASK_STATUS_WAITING
	case any(messages.SubtaskStatus_SUBTASK_STATUS_WAITING, messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING,
		messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY):
		return messages.TaskStatus_TASK_STATUS_PROCESSING
	case all(messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS):
		return messages.TaskStatus_TASK_STATUS_SUCCESS
	case all(messages.SubtaskStatus_SUBTASK_STATUS_FAIL):
		return messages.TaskStatus_TASK_STATUS_FAIL
	}
	return messages.TaskStatus_TASK_STATUS_PARTIAL_SUCCESS
}

// checkInvariants verifies counters, status and the queues against a full scan.
func checkInvariants(t testing.TB, s State) {
	t.Helper()
	if got, want := s.Progress(), recount(s); got != want {
		t.Fatalf("counters %+v, recount %+v", got, want)
	}
	if got, want := s.Status(), deriveStatus(s); got != want {
		t.Fatalf("Status() = %v, derived %v", got, want)
	}
	inWait := map[int32]int{}
	var lastEnq uint64
	for _, q := range s.waiting[s.waitHead:] {
		if s.waitingValid(q) {
			inWait[q.idx]++
			// The queue is in the order of the entries' numbers.
			if e := s.subs[q.idx].enq; e <= lastEnq {
				t.Fatalf("waiting queue: sub-task %s numbered %d after %d", s.subs[q.idx].id, e, lastEnq)
			}
			lastEnq = s.subs[q.idx].enq
		}
	}
	var maxEnq uint64
	for i := range s.subs {
		maxEnq = max(maxEnq, s.subs[i].enq)
	}
	if maxEnq != s.enqs {
		t.Fatalf("entries into WAITING counted %d, the highest sub-task number is %d", s.enqs, maxEnq)
	}
	if s.waitHead < len(s.waiting) && !s.waitingValid(s.waiting[s.waitHead]) {
		t.Fatalf("waiting head is stale")
	}
	inRetry := map[int32]int{}
	tail := s.retries[s.retryHead:]
	if !sort.SliceIsSorted(tail, func(i, j int) bool {
		return tail[i].at < tail[j].at || (tail[i].at == tail[j].at && tail[i].idx < tail[j].idx)
	}) {
		t.Fatalf("retries not sorted")
	}
	for _, q := range tail {
		if s.retryValid(q) {
			inRetry[q.idx]++
		}
	}
	if s.retryHead < len(s.retries) && !s.retryValid(s.retries[s.retryHead]) {
		t.Fatalf("retry head is stale")
	}
	for i := range s.subs {
		sub := s.subs[i]
		w := sub.status == messages.SubtaskStatus_SUBTASK_STATUS_WAITING
		r := sub.status == messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY
		if (w && inWait[int32(i)] != 1) || (!w && inWait[int32(i)] != 0) {
			t.Fatalf("sub-task %s (%v) is %d times in the waiting queue", sub.id, sub.status, inWait[int32(i)])
		}
		if (r && inRetry[int32(i)] != 1) || (!r && inRetry[int32(i)] != 0) {
			t.Fatalf("sub-task %s (%v) is %d times in the retry list", sub.id, sub.status, inRetry[int32(i)])
		}
		if r != (sub.retryAt != 0) {
			t.Fatalf("sub-task %s (%v) has retry_at %d", sub.id, sub.status, sub.retryAt)
		}
	}
}

// step runs Step and checks the conventions around it: no panic, an
// unchanged state on error, replay equivalence, invariants, and that no
// StartJob follows a stop. It returns the new state, the result and error.
func step(t testing.TB, cfg Config, s State, in *messages.TaskInput) (State, Result, error) {
	t.Helper()
	prior := cloneState(s)
	var (
		ns  State
		res Result
		err error
	)
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("Step panicked on %v: %v", in, r)
			}
		}()
		ns, res, err = Step(cfg, s, in)
	}()
	if err != nil {
		if len(res.Events)+len(res.Effects) != 0 {
			t.Fatalf("error %v with events or effects", err)
		}
		if !sameState(ns, prior) {
			t.Fatalf("state modified on error %v", err)
		}
		return ns, res, err
	}
	if replayed := fold(prior, res.Events); !sameState(replayed, ns) {
		t.Fatalf("replay mismatch after %v", in)
	}
	for _, e := range res.Events {
		if e.GetAtUnixNano() != in.GetAtUnixNano() {
			t.Fatalf("event %v does not carry the input time", e)
		}
	}
	if ns.stopRequested {
		for _, e := range res.Effects {
			if e.GetStartJob() != nil {
				t.Fatalf("StartJob after stop: %v", e)
			}
		}
	}
	checkInvariants(t, ns)
	return ns, res, nil
}

// ---- printer ----

func short(v fmt.Stringer, prefix string) string {
	return strings.TrimPrefix(v.String(), prefix)
}

func subStatus(st messages.SubtaskStatus) string { return short(st, "SUBTASK_STATUS_") }
func taskStatus(st messages.TaskStatus) string   { return short(st, "TASK_STATUS_") }

func fmtTime(ns int64) string {
	if ns == 0 {
		return "0"
	}
	return messages.Time(ns).Format(time.RFC3339)
}

func fmtMinute(m uint32) string { return fmt.Sprintf("%02d:%02d", m/60, m%60) }

func fmtEvent(e *messages.TaskEvent) string {
	switch k := e.GetKind().(type) {
	case *messages.TaskEvent_Created:
		c := k.Created
		var b strings.Builder
		fmt.Fprintf(&b, "TaskCreated task=%s type=%s protocol=%s package=%s@%s targets=%d",
			c.GetTaskId(), short(c.GetTaskType(), "TASK_TYPE_"), short(c.GetProtocol(), "PROTOCOL_"),
			c.GetPackage().GetPackageId(), c.GetPackage().GetVersion(), len(c.GetTargets()))
		if len(c.GetTargets()) <= 20 {
			fmt.Fprintf(&b, " %v", c.GetTargets())
		}
		if len(c.GetGroupIds()) > 0 {
			fmt.Fprintf(&b, " groups=%v", c.GetGroupIds())
		}
		if p := c.GetPolicy(); p != nil {
			if p.GetRetryCount() > 0 {
				fmt.Fprintf(&b, " retry=%dx%dm", p.GetRetryCount(), p.GetRetryIntervalMinutes())
			}
			if p.GetScheduleTimeUnixNano() != 0 {
				fmt.Fprintf(&b, " schedule=%s", fmtTime(p.GetScheduleTimeUnixNano()))
			}
			if w := p.GetWindow(); w != nil {
				fmt.Fprintf(&b, " window=%s-%s", fmtMinute(w.GetStartMinute()), fmtMinute(w.GetEndMinute()))
				if w.GetTimeZone() != "" {
					fmt.Fprintf(&b, "@%s", w.GetTimeZone())
				}
			}
		}
		return b.String()
	case *messages.TaskEvent_SubtaskStarted:
		return fmt.Sprintf("SubtaskStarted %s attempt=%d", k.SubtaskStarted.GetDeviceId(), k.SubtaskStarted.GetAttempt())
	case *messages.TaskEvent_SubtaskFinished:
		f := k.SubtaskFinished
		s := fmt.Sprintf("SubtaskFinished %s attempt=%d %s", f.GetDeviceId(), f.GetAttempt(), subStatus(f.GetStatus()))
		if f.GetReason() != messages.Reason_REASON_NONE {
			s += fmt.Sprintf(" reason=%q", messages.ReasonText(f.GetReason()))
		}
		if f.GetDetail() != "" {
			s += fmt.Sprintf(" detail=%q", f.GetDetail())
		}
		if f.GetDeviceDescription() != "" {
			s += fmt.Sprintf(" desc=%q", f.GetDeviceDescription())
		}
		if f.GetRetryAtUnixNano() != 0 {
			s += " retry_at=" + fmtTime(f.GetRetryAtUnixNano())
		}
		if f.GetSourceVersion() != "" {
			s += fmt.Sprintf(" source=%q", f.GetSourceVersion())
		}
		return s
	case *messages.TaskEvent_StopRequested:
		return "StopRequested"
	case *messages.TaskEvent_RetryRequested:
		if ids := k.RetryRequested.GetDeviceIds(); len(ids) > 0 {
			return fmt.Sprintf("RetryRequested %v", ids)
		}
		return "RetryRequested all"
	case *messages.TaskEvent_WakeArmed:
		return fmt.Sprintf("WakeArmed at=%s gen=%d", fmtTime(k.WakeArmed.GetAtUnixNano()), k.WakeArmed.GetGeneration())
	}
	return fmt.Sprintf("unknown event %v", e)
}

func fmtEffect(e *messages.TaskEffect) string {
	switch k := e.GetKind().(type) {
	case *messages.TaskEffect_StartJob:
		j := k.StartJob.GetJob()
		s := fmt.Sprintf("StartJob %s task=%s attempt=%d %s %s %s@%s", k.StartJob.GetDeviceId(), j.GetTaskId(), j.GetAttempt(),
			short(j.GetTaskType(), "TASK_TYPE_"), short(j.GetProtocol(), "PROTOCOL_"),
			j.GetPackage().GetPackageId(), j.GetPackage().GetVersion())
		if j.GetSkipVersionCheck() {
			s += " skip_version_check"
		}
		return s
	case *messages.TaskEffect_StopJob:
		return fmt.Sprintf("StopJob %s task=%s", k.StopJob.GetDeviceId(), k.StopJob.GetTaskId())
	case *messages.TaskEffect_ArmDeadline:
		a := k.ArmDeadline
		return fmt.Sprintf("ArmDeadline %s gen=%d at=%s", a.GetStep(), a.GetGeneration(), fmtTime(a.GetAtUnixNano()))
	}
	return fmt.Sprintf("unknown effect %v", e)
}

func kindName(v any) string {
	n := fmt.Sprintf("%T", v)
	n = n[strings.LastIndex(n, ".")+1:]
	n = strings.TrimPrefix(n, "TaskEvent_")
	return strings.TrimPrefix(n, "TaskEffect_")
}

// fmtResult prints events and effects, one a line; more than 40 of either
// are summarised by kind.
func fmtResult(b *strings.Builder, res Result) {
	if len(res.Events) > 40 {
		fmt.Fprintf(b, "events: %d (%s)\n", len(res.Events), countKinds(len(res.Events), func(i int) any { return res.Events[i].GetKind() }))
	} else {
		for _, e := range res.Events {
			fmt.Fprintf(b, "event: %s\n", fmtEvent(e))
		}
	}
	if len(res.Effects) > 40 {
		fmt.Fprintf(b, "effects: %d (%s)\n", len(res.Effects), countKinds(len(res.Effects), func(i int) any { return res.Effects[i].GetKind() }))
	} else {
		for _, e := range res.Effects {
			fmt.Fprintf(b, "effect: %s\n", fmtEffect(e))
		}
	}
}

func countKinds(n int, kind func(int) any) string {
	counts := map[string]int{}
	var order []string
	for i := range n {
		k := kindName(kind(i))
		if counts[k] == 0 {
			order = append(order, k)
		}
		counts[k]++
	}
	parts := make([]string, 0, len(order))
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%s %d", k, counts[k]))
	}
	return strings.Join(parts, ", ")
}

func fmtProgress(s State) string {
	p := s.Progress()
	return fmt.Sprintf("status: %s total=%d waiting=%d processing=%d success=%d fail=%d fail_wait_retry=%d stopped=%d",
		taskStatus(s.Status()), p.Total, p.Waiting, p.Processing, p.Success, p.Fail, p.FailWaitRetry, p.Stopped)
}

func fmtSubtask(st Subtask) string {
	s := fmt.Sprintf("%s %s attempt=%d", st.DeviceID, subStatus(st.Status), st.Attempt)
	if st.AutoRetries > 0 {
		s += fmt.Sprintf(" auto_retries=%d", st.AutoRetries)
	}
	if st.Reason != messages.Reason_REASON_NONE {
		s += fmt.Sprintf(" reason=%q", messages.ReasonText(st.Reason))
	}
	if st.Detail != "" {
		s += fmt.Sprintf(" detail=%q", st.Detail)
	}
	if st.DeviceDescription != "" {
		s += fmt.Sprintf(" desc=%q", st.DeviceDescription)
	}
	if !st.RetryAt.IsZero() {
		s += " retry_at=" + st.RetryAt.Format(time.RFC3339)
	}
	if st.SourceVersion != "" {
		s += fmt.Sprintf(" source=%q", st.SourceVersion)
	}
	if !st.StartedAt.IsZero() {
		s += " started=" + st.StartedAt.Format(time.RFC3339)
	}
	if !st.UpdatedAt.IsZero() {
		s += " updated=" + st.UpdatedAt.Format(time.RFC3339)
	}
	return s
}
