package taskfsm

import (
	"fmt"
	"strings"
	"time"
	_ "time/tzdata" // time zones load the same on every machine

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/messages"
)

// Result is what the caller must do, in order: persist Events (one batch),
// then run Effects.
type Result struct {
	Events  []*messages.TaskEvent
	Effects []*messages.TaskEffect
}

// Step decides what input in means for the task in state s: it validates the
// input, computes events and effects, and applies the events with Evolve, so
// the returned State always equals the fold of Evolve over the journal. On
// error it returns s unmodified and an empty Result; an input that is valid
// but pointless now (a stale wake, a duplicate or stale outcome) is ignored:
// no error, no events, no effects.
func Step(cfg Config, s State, in *messages.TaskInput) (State, Result, error) {
	orig := s
	st := stepper{cfg: cfg, s: s, at: in.GetAtUnixNano()}
	var err error
	switch k := in.GetKind().(type) {
	case nil:
		err = fmt.Errorf("%w: input is nil or has no kind", ErrInvalidInput)
	default:
		if st.at <= 0 {
			err = fmt.Errorf("%w: at_unix_nano must be set", ErrInvalidInput)
			break
		}
		switch k := k.(type) {
		case *messages.TaskInput_Create:
			err = st.create(k.Create)
		case *messages.TaskInput_Outcome:
			err = st.outcome(k.Outcome)
		case *messages.TaskInput_Stop:
			err = st.stop(k.Stop)
		case *messages.TaskInput_Retry:
			err = st.retry(k.Retry)
		case *messages.TaskInput_DeadlineFired:
			err = st.wake(k.DeadlineFired)
		}
	}
	if err != nil {
		return orig, Result{}, err
	}
	return st.s, st.res, nil
}

type stepper struct {
	cfg Config
	s   State
	at  int64
	res Result
}

func (st *stepper) emit(e *messages.TaskEvent) {
	e.AtUnixNano = st.at
	st.res.Events = append(st.res.Events, e)
	st.s = Evolve(st.s, e)
}

func (st *stepper) effect(e *messages.TaskEffect) {
	st.res.Effects = append(st.res.Effects, e)
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidInput}, args...)...)
}

func notAllowed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidTransition}, args...)...)
}

// location returns the window's time zone, loading it once per State.
func (st *stepper) location() *time.Location {
	if st.s.loc == nil {
		loc, err := loadZone(st.s.task.GetPolicy().GetWindow().GetTimeZone())
		if err != nil {
			loc = time.UTC // unreachable for a validated task
		}
		st.s.loc = loc
	}
	return st.s.loc
}

// ---- CreateTask ----

func (st *stepper) create(c *messages.CreateTask) error {
	if st.s.task != nil {
		return notAllowed("task %q already exists", st.s.task.GetTaskId())
	}
	if c == nil {
		return invalid("create is empty")
	}
	ev, err := st.validateCreate(c)
	if err != nil {
		return err
	}
	st.emit(&messages.TaskEvent{Kind: &messages.TaskEvent_Created{Created: ev}})
	st.startDue()
	st.rearm(false)
	return nil
}

func (st *stepper) checkID(field string, i int, id string) error {
	if id == "" {
		return invalid("%s[%d] is empty", field, i)
	}
	if len(id) > st.cfg.MaxDeviceIDLen {
		return invalid("%s[%d] is %d characters long, more than %d", field, i, len(id), st.cfg.MaxDeviceIDLen)
	}
	return nil
}

func (st *stepper) validateCreate(c *messages.CreateTask) (*messages.TaskCreated, error) {
	cfg := st.cfg
	if c.GetTaskId() == "" {
		return nil, invalid("task_id is required")
	}
	if c.GetTaskType() == messages.TaskType_TASK_TYPE_UNSPECIFIED {
		return nil, invalid("task_type is required")
	}
	if _, ok := messages.TaskType_name[int32(c.GetTaskType())]; !ok {
		return nil, invalid("task_type %d is unknown", int32(c.GetTaskType()))
	}
	if c.GetProtocol() == messages.Protocol_PROTOCOL_UNSPECIFIED {
		return nil, invalid("protocol is required")
	}
	if _, ok := messages.Protocol_name[int32(c.GetProtocol())]; !ok {
		return nil, invalid("protocol %d is unknown", int32(c.GetProtocol()))
	}
	if c.GetPackage() == nil {
		return nil, invalid("package is required")
	}
	if c.GetPackage().GetPackageId() == "" {
		return nil, invalid("package.package_id is required")
	}
	if c.GetPackage().GetVersion() == "" {
		return nil, invalid("package.version is required")
	}
	if err := cfg.ValidateDeviceCount(len(c.GetDeviceIds())); err != nil {
		return nil, err
	}
	for i, id := range c.GetDeviceIds() {
		if err := st.checkID("device_ids", i, id); err != nil {
			return nil, err
		}
	}
	for i, id := range c.GetGroupMembers() {
		if err := st.checkID("group_members", i, id); err != nil {
			return nil, err
		}
	}
	for i, id := range c.GetGroupIds() {
		if id == "" {
			return nil, invalid("group_ids[%d] is empty", i)
		}
	}
	targets := make([]string, 0, len(c.GetDeviceIds())+len(c.GetGroupMembers()))
	seen := make(map[string]struct{}, cap(targets))
	for _, list := range [][]string{c.GetDeviceIds(), c.GetGroupMembers()} {
		for _, id := range list {
			if _, dup := seen[id]; !dup {
				seen[id] = struct{}{}
				targets = append(targets, id)
			}
		}
	}
	if len(targets) == 0 {
		return nil, invalid("no targets: device_ids and group_members are empty")
	}
	p := c.GetPolicy()
	loc, err := cfg.validatePolicy(p, st.at)
	if err != nil {
		return nil, err
	}
	if loc != nil {
		st.s.loc = loc
	}
	var policy *messages.Policy
	if p != nil {
		policy = &messages.Policy{
			ScheduleTimeUnixNano: p.GetScheduleTimeUnixNano(),
			RetryCount:           p.GetRetryCount(),
			RetryIntervalMinutes: p.GetRetryIntervalMinutes(),
		}
		if w := p.GetWindow(); w != nil {
			policy.Window = &messages.Window{StartMinute: w.GetStartMinute(), EndMinute: w.GetEndMinute(), TimeZone: w.GetTimeZone()}
		}
	}
	return &messages.TaskCreated{
		TaskId:           c.GetTaskId(),
		Name:             c.GetName(),
		TaskType:         c.GetTaskType(),
		Protocol:         c.GetProtocol(),
		Package:          proto.CloneOf(c.GetPackage()),
		SkipVersionCheck: c.GetSkipVersionCheck(),
		Targets:          targets,
		GroupIds:         append([]string(nil), c.GetGroupIds()...),
		Policy:           policy,
	}, nil
}

// ---- starting sub-tasks and the wake ----

// startDue starts every sub-task that may start now: the task is not
// stopped, schedule_time has come, the window is open and MaxInFlight
// allows. WAITING sub-tasks go first, in queue order, then due retries in
// retry_at order.
func (st *stepper) startDue() {
	s := &st.s
	if s.task == nil || s.stopRequested || st.at < s.task.GetPolicy().GetScheduleTimeUnixNano() {
		return
	}
	if w := s.task.GetPolicy().GetWindow(); w != nil && !isOpen(w, st.location(), messages.Time(st.at)) {
		return
	}
	budget := -1
	if st.cfg.MaxInFlight > 0 {
		budget = st.cfg.MaxInFlight - s.prog.Processing
		if budget <= 0 {
			return
		}
	}
	var picks []int32
	full := func() bool { return budget >= 0 && len(picks) >= budget }
	for k := s.waitHead; k < len(s.waiting) && !full(); k++ {
		if q := s.waiting[k]; s.waitingValid(q) {
			picks = append(picks, q.idx)
		}
	}
	for k := s.retryHead; k < len(s.retries) && !full(); k++ {
		q := s.retries[k]
		if q.at > st.at {
			break
		}
		if s.retryValid(q) {
			picks = append(picks, q.idx)
		}
	}
	task := s.task
	for _, i := range picks {
		id, attempt := s.subs[i].id, s.subs[i].attempt+1
		st.emit(&messages.TaskEvent{Kind: &messages.TaskEvent_SubtaskStarted{
			SubtaskStarted: &messages.SubtaskStarted{DeviceId: id, Attempt: attempt}}})
		st.effect(&messages.TaskEffect{Kind: &messages.TaskEffect_StartJob{StartJob: &messages.StartJob{
			DeviceId: id,
			Job: &messages.Job{
				TaskId:           task.GetTaskId(),
				Attempt:          attempt,
				TaskType:         task.GetTaskType(),
				Protocol:         task.GetProtocol(),
				Package:          task.GetPackage(),
				SkipVersionCheck: task.GetSkipVersionCheck(),
			},
		}}})
	}
}

// desiredWake is when the task next needs to wake, or 0: the earliest time
// at which a WAITING sub-task or a FAIL_WAIT_RETRY one becomes startable,
// considering schedule_time and the window but not MaxInFlight (a finishing
// sub-task frees a slot and triggers starts by itself). It is 0 when nothing
// is pending or something is startable now (held back only by MaxInFlight).
func (st *stepper) desiredWake() int64 {
	s := &st.s
	if s.task == nil || s.stopRequested {
		return 0
	}
	var earliest int64
	if s.prog.Waiting > 0 {
		earliest = st.at
	}
	if at, ok := s.nextRetryAt(); ok && (earliest == 0 || at < earliest) {
		earliest = at
	}
	if earliest == 0 {
		return 0
	}
	earliest = max(earliest, st.at, s.task.GetPolicy().GetScheduleTimeUnixNano())
	t := messages.Time(earliest)
	if w := s.task.GetPolicy().GetWindow(); w != nil {
		t = NextOpen(w, st.location(), t)
	}
	if t.UnixNano() <= st.at {
		return 0
	}
	return t.UnixNano()
}

// rearm arms the wake when the desired time differs from the armed one, or
// when the armed wake has just fired (consumed). A consumed wake with
// nothing left to wait for is recorded as WakeArmed{at: 0}.
func (st *stepper) rearm(consumed bool) {
	want := st.desiredWake()
	if !consumed && want == st.s.wakeAt {
		return
	}
	if want == 0 && !consumed {
		return // keep the armed timer; when it fires it finds nothing to do
	}
	gen := st.s.wakeGen + 1
	st.emit(&messages.TaskEvent{Kind: &messages.TaskEvent_WakeArmed{WakeArmed: &messages.WakeArmed{AtUnixNano: want, Generation: gen}}})
	if want != 0 {
		st.effect(armEffect(want, gen))
	}
}

func armEffect(at int64, gen uint64) *messages.TaskEffect {
	return &messages.TaskEffect{Kind: &messages.TaskEffect_ArmDeadline{ArmDeadline: &messages.ArmDeadline{
		Step: WakeStep, Generation: gen, AtUnixNano: at}}}
}

func (st *stepper) wake(d *messages.DeadlineFired) error {
	if d == nil {
		return invalid("deadline_fired is empty")
	}
	s := &st.s
	if s.task == nil || s.wakeAt == 0 || d.GetStep() != WakeStep || d.GetGeneration() != s.wakeGen {
		return nil // stale
	}
	st.startDue()
	st.rearm(true)
	return nil
}

// ---- ReportOutcome ----

func (st *stepper) outcome(o *messages.ReportOutcome) error {
	s := &st.s
	if s.task == nil {
		return notAllowed("outcome for a task that does not exist")
	}
	if o == nil {
		return invalid("outcome is empty")
	}
	if o.GetTaskId() != s.task.GetTaskId() {
		return invalid("outcome.task_id %q is not this task %q", o.GetTaskId(), s.task.GetTaskId())
	}
	if o.GetDeviceId() == "" {
		return invalid("outcome.device_id is required")
	}
	status := o.GetStatus()
	switch status {
	case messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS,
		messages.SubtaskStatus_SUBTASK_STATUS_FAIL,
		messages.SubtaskStatus_SUBTASK_STATUS_STOPPED:
	default:
		return invalid("outcome.status %v is not SUCCESS, FAIL or STOPPED", status)
	}
	i, ok := s.lookup(o.GetDeviceId())
	if !ok {
		return invalid("outcome.device_id %q is not a target of task %q", o.GetDeviceId(), s.task.GetTaskId())
	}
	sub := &s.subs[i]
	if sub.status != messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING || o.GetAttempt() != sub.attempt {
		return nil // stale or duplicate
	}
	fin := &messages.SubtaskFinished{
		DeviceId:          sub.id,
		Attempt:           sub.attempt,
		Status:            status,
		Reason:            o.GetReason(),
		Detail:            o.GetDetail(),
		ResultCode:        o.GetResultCode(),
		SourceVersion:     o.GetSourceVersion(),
		DeviceDescription: o.GetDeviceDescription(),
	}
	if p := s.task.GetPolicy(); status == messages.SubtaskStatus_SUBTASK_STATUS_FAIL &&
		!s.stopRequested && sub.autoRetries < p.GetRetryCount() {
		fin.Status = messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY
		fin.RetryAtUnixNano = st.at + int64(p.GetRetryIntervalMinutes())*int64(time.Minute)
	}
	st.emit(&messages.TaskEvent{Kind: &messages.TaskEvent_SubtaskFinished{SubtaskFinished: fin}})
	st.startDue()
	st.rearm(false)
	return nil
}

// ---- StopTask ----

func (st *stepper) stop(x *messages.StopTask) error {
	s := &st.s
	if s.task == nil {
		return notAllowed("stop of a task that does not exist")
	}
	if x == nil {
		return invalid("stop is empty")
	}
	switch ts := s.Status(); {
	case ts == messages.TaskStatus_TASK_STATUS_STOPPED, ts == messages.TaskStatus_TASK_STATUS_STOPPING:
		return notAllowed("task %q is already %s", s.task.GetTaskId(), strings.ToLower(strings.TrimPrefix(ts.String(), "TASK_STATUS_")))
	case ts.Final():
		return notAllowed("task %q has already finished (%s); only a waiting or processing task can be stopped", s.task.GetTaskId(), strings.TrimPrefix(ts.String(), "TASK_STATUS_"))
	}
	st.emit(&messages.TaskEvent{Kind: &messages.TaskEvent_StopRequested{StopRequested: &messages.StopRequested{}}})
	for i := range s.subs {
		sub := &s.subs[i]
		switch sub.status {
		case messages.SubtaskStatus_SUBTASK_STATUS_WAITING, messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY:
			st.emit(&messages.TaskEvent{Kind: &messages.TaskEvent_SubtaskFinished{SubtaskFinished: &messages.SubtaskFinished{
				DeviceId: sub.id,
				Attempt:  sub.attempt,
				Status:   messages.SubtaskStatus_SUBTASK_STATUS_STOPPED,
				Reason:   messages.Reason_REASON_STOPPED,
			}}})
		case messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING:
			st.effect(stopEffect(sub.id, s.task.GetTaskId()))
		}
	}
	return nil
}

func stopEffect(deviceID, taskID string) *messages.TaskEffect {
	return &messages.TaskEffect{Kind: &messages.TaskEffect_StopJob{StopJob: &messages.StopJob{DeviceId: deviceID, TaskId: taskID}}}
}

// ---- RetryTask ----

func (st *stepper) retry(r *messages.RetryTask) error {
	s := &st.s
	if s.task == nil {
		return notAllowed("retry of a task that does not exist")
	}
	if r == nil {
		return invalid("retry is empty")
	}
	switch ts := s.Status(); ts {
	case messages.TaskStatus_TASK_STATUS_PROCESSING, messages.TaskStatus_TASK_STATUS_FAIL,
		messages.TaskStatus_TASK_STATUS_PARTIAL_SUCCESS:
	default:
		return notAllowed("task %q is %v; retry needs PROCESSING, FAIL or PARTIAL_SUCCESS", s.task.GetTaskId(), ts)
	}
	var listed []string
	found := false
	if len(r.GetDeviceIds()) == 0 {
		for i := range s.subs {
			if retryable(s.subs[i].status) {
				found = true
				break
			}
		}
	} else {
		seen := make(map[string]struct{}, len(r.GetDeviceIds()))
		for k, id := range r.GetDeviceIds() {
			if id == "" {
				return invalid("retry.device_ids[%d] is empty", k)
			}
			i, ok := s.lookup(id)
			if !ok {
				return invalid("retry.device_ids[%d] %q is not a target of task %q", k, id, s.task.GetTaskId())
			}
			if _, dup := seen[id]; dup || !retryable(s.subs[i].status) {
				continue
			}
			seen[id] = struct{}{}
			listed = append(listed, id)
		}
		found = len(listed) > 0
	}
	if !found {
		which := "no sub-task"
		if len(r.GetDeviceIds()) > 0 {
			which = "no listed sub-task"
		}
		return notAllowed("nothing to retry in task %q: %s is FAIL, FAIL_WAIT_RETRY or STOPPED", s.task.GetTaskId(), which)
	}
	st.emit(&messages.TaskEvent{Kind: &messages.TaskEvent_RetryRequested{RetryRequested: &messages.RetryRequested{DeviceIds: listed, KeepPendingRetries: true}}})
	st.startDue()
	st.rearm(false)
	return nil
}

// ---- Resume ----

// Resume returns the effects to run after the state was rebuilt from the
// journal: the armed wake again, StartJob for every PROCESSING sub-task (a
// device actor ignores a StartJob for the job it already runs) or, once a
// stop was requested, StopJob for each of them instead (no StartJob is ever
// sent after a stop).
func Resume(s State) []*messages.TaskEffect {
	if s.task == nil {
		return nil
	}
	var out []*messages.TaskEffect
	if s.wakeAt != 0 {
		out = append(out, armEffect(s.wakeAt, s.wakeGen))
	}
	for i := range s.subs {
		sub := &s.subs[i]
		if sub.status != messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING {
			continue
		}
		if s.stopRequested {
			out = append(out, stopEffect(sub.id, s.task.GetTaskId()))
			continue
		}
		out = append(out, &messages.TaskEffect{Kind: &messages.TaskEffect_StartJob{StartJob: &messages.StartJob{
			DeviceId: sub.id,
			Job: &messages.Job{
				TaskId:           s.task.GetTaskId(),
				Attempt:          sub.attempt,
				TaskType:         s.task.GetTaskType(),
				Protocol:         s.task.GetProtocol(),
				Package:          s.task.GetPackage(),
				SkipVersionCheck: s.task.GetSkipVersionCheck(),
			},
		}}})
	}
	return out
}
