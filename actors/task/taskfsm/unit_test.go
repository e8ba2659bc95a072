package taskfsm

import (
	"errors"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/otafleet/otafleet/messages"
)

var unitT0 = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)

func createInput(at time.Time, c *messages.CreateTask) *messages.TaskInput {
	return &messages.TaskInput{AtUnixNano: at.UnixNano(), Kind: &messages.TaskInput_Create{Create: c}}
}

func validCreate(ids ...string) *messages.CreateTask {
	return &messages.CreateTask{
		TaskId: "t1", TaskType: messages.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, Protocol: messages.Protocol_PROTOCOL_MQTT,
		Package: &messages.Package{PackageId: "p1", Version: "2"}, DeviceIds: ids,
	}
}

func mustStep(t *testing.T, cfg Config, s State, in *messages.TaskInput) (State, Result) {
	t.Helper()
	s, res, err := step(t, cfg, s, in)
	if err != nil {
		t.Fatal(err)
	}
	return s, res
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Config){
		"MaxTargets":              func(c *Config) { c.MaxTargets = 0 },
		"MaxDeviceIDLen":          func(c *Config) { c.MaxDeviceIDLen = 0 },
		"MaxRetryCount":           func(c *Config) { c.MaxRetryCount = -1 },
		"MaxRetryIntervalMinutes": func(c *Config) { c.MaxRetryIntervalMinutes = -1 },
		"ScheduleHorizon":         func(c *Config) { c.ScheduleHorizon = -time.Second },
		"MaxInFlight":             func(c *Config) { c.MaxInFlight = -1 },
	} {
		c := DefaultConfig()
		mut(&c)
		err := c.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: got %v", name, err)
		}
	}
}

func TestStepMalformed(t *testing.T) {
	cfg := DefaultConfig()
	created, _ := mustStep(t, cfg, State{}, createInput(unitT0, validCreate("a")))
	at := unitT0.UnixNano()
	long := strings.Repeat("x", 129)
	tests := []struct {
		name string
		s    State
		in   *messages.TaskInput
		want error
		msg  string
	}{
		{"nil input", State{}, nil, ErrInvalidInput, "no kind"},
		{"no kind", State{}, &messages.TaskInput{AtUnixNano: at}, ErrInvalidInput, "no kind"},
		{"no time", State{}, createInput(time.Time{}, validCreate("a")), ErrInvalidInput, "at_unix_nano"},
		{"nil create", State{}, createInput(unitT0, nil), ErrInvalidInput, "create is empty"},
		{"nil package", State{}, createInput(unitT0, &messages.CreateTask{TaskId: "t", TaskType: 1, Protocol: 1, DeviceIds: []string{"a"}}), ErrInvalidInput, "package is required"},
		{"empty device id", State{}, createInput(unitT0, validCreate("a", "")), ErrInvalidInput, "device_ids[1] is empty"},
		{"long device id", State{}, createInput(unitT0, validCreate(long)), ErrInvalidInput, "device_ids[0] is 129 characters"},
		{"empty member", State{}, createInput(unitT0, func() *messages.CreateTask {
			c := validCreate()
			c.GroupMembers = []string{"m", ""}
			return c
		}()), ErrInvalidInput, "group_members[1] is empty"},
		{"long member", State{}, createInput(unitT0, func() *messages.CreateTask {
			c := validCreate("a")
			c.GroupMembers = []string{long}
			return c
		}()), ErrInvalidInput, "group_members[0] is 129"},
		{"nil outcome", created, &messages.TaskInput{AtUnixNano: at, Kind: &messages.TaskInput_Outcome{}}, ErrInvalidInput, "outcome is empty"},
		{"outcome without device", created, &messages.TaskInput{AtUnixNano: at, Kind: &messages.TaskInput_Outcome{Outcome: &messages.ReportOutcome{TaskId: "t1"}}}, ErrInvalidInput, "outcome.device_id is required"},
		{"nil stop", created, &messages.TaskInput{AtUnixNano: at, Kind: &messages.TaskInput_Stop{}}, ErrInvalidInput, "stop is empty"},
		{"nil retry", created, &messages.TaskInput{AtUnixNano: at, Kind: &messages.TaskInput_Retry{}}, ErrInvalidInput, "retry is empty"},
		{"retry empty id", created, &messages.TaskInput{AtUnixNano: at, Kind: &messages.TaskInput_Retry{Retry: &messages.RetryTask{DeviceIds: []string{""}}}}, ErrInvalidInput, "retry.device_ids[0] is empty"},
		{"nil deadline", created, &messages.TaskInput{AtUnixNano: at, Kind: &messages.TaskInput_DeadlineFired{}}, ErrInvalidInput, "deadline_fired is empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := step(t, cfg, tc.s, tc.in)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want %v containing %q", err, tc.want, tc.msg)
			}
		})
	}
}

func TestAccessors(t *testing.T) {
	var zero State
	if zero.Created() || zero.Task() != nil || zero.TaskID() != "" || zero.StopRequested() || zero.Status() != messages.TaskStatus_TASK_STATUS_UNSPECIFIED {
		t.Fatal("zero state is not empty")
	}
	if zero.Subtasks(0, 10) != nil || len(Resume(zero)) != 0 {
		t.Fatal("zero state has sub-tasks or effects")
	}
	c := validCreate("a", "b", "c")
	c.Policy = &messages.Policy{ScheduleTimeUnixNano: unitT0.Add(time.Hour).UnixNano()}
	s, _ := mustStep(t, DefaultConfig(), State{}, createInput(unitT0, c))
	if !s.Created() || s.Task().GetTaskId() != "t1" || s.TaskID() != "t1" {
		t.Fatal("accessors after create")
	}
	if _, ok := s.Subtask("zz"); ok {
		t.Fatal("unknown sub-task found")
	}
	ids := func(l []Subtask) string {
		var out []string
		for _, st := range l {
			out = append(out, st.DeviceID)
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		off, lim int
		want     string
	}{{0, 0, "a,b,c"}, {-1, 2, "a,b"}, {1, 1, "b"}, {2, 5, "c"}, {3, 1, ""}} {
		if got := ids(s.Subtasks(tc.off, tc.lim)); got != tc.want {
			t.Errorf("Subtasks(%d, %d) = %q, want %q", tc.off, tc.lim, got, tc.want)
		}
	}
	s, _ = mustStep(t, DefaultConfig(), s, &messages.TaskInput{AtUnixNano: unitT0.UnixNano(), Kind: &messages.TaskInput_Stop{Stop: &messages.StopTask{}}})
	if !s.StopRequested() {
		t.Fatal("StopRequested")
	}
}

// TestEvolveTotal: Evolve never panics and ignores events that do not fit.
func TestEvolveTotal(t *testing.T) {
	ev := func(k any) *messages.TaskEvent {
		e := &messages.TaskEvent{AtUnixNano: 1}
		switch k := k.(type) {
		case *messages.TaskCreated:
			e.Kind = &messages.TaskEvent_Created{Created: k}
		case *messages.SubtaskStarted:
			e.Kind = &messages.TaskEvent_SubtaskStarted{SubtaskStarted: k}
		case *messages.SubtaskFinished:
			e.Kind = &messages.TaskEvent_SubtaskFinished{SubtaskFinished: k}
		case *messages.StopRequested:
			e.Kind = &messages.TaskEvent_StopRequested{StopRequested: k}
		case *messages.RetryRequested:
			e.Kind = &messages.TaskEvent_RetryRequested{RetryRequested: k}
		case *messages.WakeArmed:
			e.Kind = &messages.TaskEvent_WakeArmed{WakeArmed: k}
		}
		return e
	}
	noops := []*messages.TaskEvent{
		nil, {}, ev((*messages.TaskCreated)(nil)),
		ev(&messages.SubtaskStarted{DeviceId: "a", Attempt: 1}),
		ev(&messages.SubtaskFinished{DeviceId: "a", Status: messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS}),
		ev(&messages.StopRequested{}), ev(&messages.RetryRequested{}), ev(&messages.WakeArmed{AtUnixNano: 5, Generation: 1}),
	}
	for _, e := range noops {
		if s := Evolve(State{}, e); !sameState(s, State{}) {
			t.Fatalf("Evolve(zero, %v) changed the state", e)
		}
	}
	// A created task with duplicate targets keeps the first.
	s := Evolve(State{}, ev(&messages.TaskCreated{TaskId: "t", Targets: []string{"a", "b", "a"}}))
	if s.Progress().Total != 2 {
		t.Fatalf("total %d", s.Progress().Total)
	}
	before := cloneState(s)
	for _, e := range []*messages.TaskEvent{
		ev(&messages.TaskCreated{TaskId: "u", Targets: []string{"x"}}),
		ev(&messages.SubtaskStarted{DeviceId: "zz", Attempt: 1}),
		ev(&messages.SubtaskFinished{DeviceId: "zz", Status: messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS}),
		ev(&messages.SubtaskFinished{DeviceId: "a", Status: messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING}),
		ev(&messages.SubtaskFinished{DeviceId: "a", Status: 99}),
		ev((*messages.StopRequested)(nil)),
		ev((*messages.RetryRequested)(nil)),
		ev(&messages.RetryRequested{DeviceIds: []string{"zz", "a"}}), // a is WAITING: not retryable
		ev((*messages.WakeArmed)(nil)),
	} {
		s = Evolve(s, e)
		if !sameState(s, before) {
			t.Fatalf("Evolve(%v) changed the state", e)
		}
	}
	checkInvariants(t, s)
}

// TestLocationRebuilt: a state folded from the journal has no cached zone;
// Step loads it and behaves like the live state.
func TestLocationRebuilt(t *testing.T) {
	cfg := DefaultConfig()
	c := validCreate("a")
	c.Policy = &messages.Policy{Window: &messages.Window{StartMinute: 60, EndMinute: 300, TimeZone: "Asia/Shanghai"}}
	live, res := mustStep(t, cfg, State{}, createInput(unitT0, c))
	replayed := fold(State{}, res.Events)
	if replayed.loc != nil || live.loc == nil {
		t.Fatal("zone cache: live should have it, replay not")
	}
	at, gen := live.Wake()
	fire := &messages.TaskInput{AtUnixNano: at.UnixNano(), Kind: &messages.TaskInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{Step: WakeStep, Generation: gen}}}
	_, r1 := mustStep(t, cfg, live, fire)
	s2, r2 := mustStep(t, cfg, replayed, fire)
	if len(r1.Events) != len(r2.Events) || len(r2.Effects) != 1 || s2.loc == nil {
		t.Fatalf("replayed state behaves differently: %d vs %d events", len(r1.Events), len(r2.Events))
	}
	// An invalid zone in a journaled event (never produced by Step) falls back to UTC.
	bad := &messages.TaskCreated{TaskId: "t", Targets: []string{"a"}, Policy: &messages.Policy{Window: &messages.Window{StartMinute: 60, EndMinute: 120, TimeZone: "Nowhere/None"}}}
	s := Evolve(State{}, &messages.TaskEvent{AtUnixNano: 1, Kind: &messages.TaskEvent_Created{Created: bad}})
	s, _ = mustStep(t, cfg, s, &messages.TaskInput{AtUnixNano: unitT0.UnixNano(), Kind: &messages.TaskInput_Stop{Stop: &messages.StopTask{}}})
	st := stepper{cfg: cfg, s: s, at: 1}
	if st.location() != time.UTC {
		t.Fatal("fallback zone is not UTC")
	}
}

// TestResumeStartJobs: Resume re-sends the StartJob of every running sub-task
// and re-arms the wake.
func TestResumeStartJobs(t *testing.T) {
	cfg := DefaultConfig()
	c := validCreate("a", "b")
	c.Policy = &messages.Policy{RetryCount: 1, RetryIntervalMinutes: 5}
	s, res := mustStep(t, cfg, State{}, createInput(unitT0, c))
	effects := Resume(fold(State{}, res.Events))
	if len(effects) != 2 || effects[0].GetStartJob().GetJob().GetAttempt() != 1 || effects[1].GetStartJob().GetDeviceId() != "b" {
		t.Fatalf("Resume = %v", effects)
	}
	s, _ = mustStep(t, cfg, s, &messages.TaskInput{AtUnixNano: unitT0.UnixNano(), Kind: &messages.TaskInput_Outcome{Outcome: &messages.ReportOutcome{
		TaskId: "t1", DeviceId: "a", Attempt: 1, Status: messages.SubtaskStatus_SUBTASK_STATUS_FAIL}}})
	effects = Resume(s)
	if len(effects) != 2 || effects[0].GetArmDeadline().GetStep() != WakeStep || effects[1].GetStartJob().GetDeviceId() != "b" {
		t.Fatalf("Resume = %v", effects)
	}
}

// TestStartedAt: a sub-task's StartedAt is zero until its first attempt
// starts, then the time of its latest SubtaskStarted: an automatic retry's
// start replaces it, a finish or an on-demand retry request (the sub-task
// back to WAITING) leaves it, and the retry's own start replaces it again. It
// survives replay and a snapshot, and a snapshot written before the field
// existed loads with a zero StartedAt.
func TestStartedAt(t *testing.T) {
	cfg := DefaultConfig()
	c := validCreate("a", "b")
	sched := unitT0.Add(time.Hour)
	c.Policy = &messages.Policy{RetryCount: 1, RetryIntervalMinutes: 5, ScheduleTimeUnixNano: sched.UnixNano()}
	s, res := mustStep(t, cfg, State{}, createInput(unitT0, c))
	journal := res.Events
	do := func(in *messages.TaskInput) {
		t.Helper()
		var res Result
		s, res = mustStep(t, cfg, s, in)
		journal = append(journal, res.Events...)
	}
	fire := func(at time.Time) {
		t.Helper()
		wake, gen := s.Wake()
		if !wake.Equal(at) {
			t.Fatalf("wake at %v, want %v", wake, at)
		}
		do(&messages.TaskInput{AtUnixNano: at.UnixNano(), Kind: &messages.TaskInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{Step: WakeStep, Generation: gen}}})
	}
	fail := func(at time.Time, dev string, attempt uint32) {
		t.Helper()
		do(&messages.TaskInput{AtUnixNano: at.UnixNano(), Kind: &messages.TaskInput_Outcome{Outcome: &messages.ReportOutcome{
			TaskId: "t1", DeviceId: dev, Attempt: attempt, Status: messages.SubtaskStatus_SUBTASK_STATUS_FAIL}}})
	}
	want := func(dev string, status messages.SubtaskStatus, attempt uint32, started, updated time.Time) {
		t.Helper()
		for name, st := range map[string]State{"live": s, "replayed": fold(State{}, journal), "restored": restore(t, snapshotBytes(t, s))} {
			sub, _ := st.Subtask(dev)
			if sub.Status != status || sub.Attempt != attempt || !sub.StartedAt.Equal(started) || !sub.UpdatedAt.Equal(updated) {
				t.Fatalf("%s %s: %s; want %s attempt=%d started=%v updated=%v", name, dev, fmtSubtask(sub),
					subStatus(status), attempt, started, updated)
			}
		}
	}
	const (
		waiting    = messages.SubtaskStatus_SUBTASK_STATUS_WAITING
		processing = messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING
		retryWait  = messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY
		failed     = messages.SubtaskStatus_SUBTASK_STATUS_FAIL
	)
	want("a", waiting, 0, time.Time{}, unitT0) // scheduled: not started yet

	fire(sched)
	want("a", processing, 1, sched, sched)
	want("b", processing, 1, sched, sched)

	t1 := sched.Add(2 * time.Minute)
	fail(t1, "a", 1)
	want("a", retryWait, 1, sched, t1) // the finish keeps the start

	t2 := t1.Add(5 * time.Minute)
	fire(t2)
	want("a", processing, 2, t2, t2) // the automatic retry's start replaces it
	want("b", processing, 1, sched, sched)

	t3 := t2.Add(time.Minute)
	fail(t3, "a", 2)
	want("a", failed, 2, t2, t3)

	// An on-demand retry: its RetryRequested alone (the sub-task WAITING
	// again) keeps the last start; the SubtaskStarted that follows it in the
	// same step replaces it.
	t4 := t3.Add(time.Hour)
	before := cloneState(s)
	s, res = mustStep(t, cfg, s, &messages.TaskInput{AtUnixNano: t4.UnixNano(), Kind: &messages.TaskInput_Retry{Retry: &messages.RetryTask{DeviceIds: []string{"a"}}}})
	journal = append(journal, res.Events...)
	if len(res.Events) < 2 || res.Events[0].GetRetryRequested() == nil || res.Events[1].GetSubtaskStarted() == nil {
		t.Fatalf("retry journaled %v; want RetryRequested, SubtaskStarted", res.Events)
	}
	mid := fold(before, res.Events[:1])
	if sub, _ := mid.Subtask("a"); sub.Status != waiting || !sub.StartedAt.Equal(t2) {
		t.Fatalf("after RetryRequested alone: %s; want WAITING started=%v", fmtSubtask(sub), t2)
	}
	want("a", processing, 3, t4, t4)
	want("b", processing, 1, sched, sched)

	// A snapshot from before started_at_unix_nano existed: zero, not an error.
	p := Snapshot(s)
	p.Subtasks[0].StartedAtUnixNano = 0
	old, err := FromSnapshot(p)
	if err != nil {
		t.Fatalf("snapshot without start times: %v", err)
	}
	if sub, _ := old.Subtask("a"); !sub.StartedAt.IsZero() || sub.Attempt != 3 {
		t.Fatalf("snapshot without start times: %s", fmtSubtask(sub))
	}
}

// TestLargeTaskQueues runs 3,000 devices one at a time (MaxInFlight 1), so
// the queues compact, and checks the journal still folds to the live state.
func TestLargeTaskQueues(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxInFlight = 1
	const n = 3000
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "d" + strconv.Itoa(i)
	}
	c := validCreate(ids...)
	c.Policy = &messages.Policy{RetryCount: 1, RetryIntervalMinutes: 1}
	s, res, err := Step(cfg, State{}, createInput(unitT0, c))
	if err != nil {
		t.Fatal(err)
	}
	journal := res.Events
	now := unitT0
	for i := 0; i < 4*n; i++ {
		now = now.Add(time.Second)
		var running Subtask
		found := false
		for k := range s.subs {
			if s.subs[k].status == messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING {
				running, found = s.subs[k].view(), true
				break
			}
		}
		var in *messages.TaskInput
		switch {
		case found:
			st := messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS
			if i%2 == 0 {
				st = messages.SubtaskStatus_SUBTASK_STATUS_FAIL
			}
			in = &messages.TaskInput{AtUnixNano: now.UnixNano(), Kind: &messages.TaskInput_Outcome{Outcome: &messages.ReportOutcome{
				TaskId: "t1", DeviceId: running.DeviceID, Attempt: running.Attempt, Status: st}}}
		default:
			at, gen := s.Wake()
			if at.IsZero() {
				i = 4 * n
				continue
			}
			now = at
			in = &messages.TaskInput{AtUnixNano: now.UnixNano(), Kind: &messages.TaskInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{Step: WakeStep, Generation: gen}}}
		}
		s, res, err = Step(cfg, s, in)
		if err != nil {
			t.Fatal(err)
		}
		journal = append(journal, res.Events...)
		if s.Progress().Processing > 1 {
			t.Fatalf("%d in flight", s.Progress().Processing)
		}
	}
	checkInvariants(t, s)
	if !sameState(fold(State{}, journal), s) {
		t.Fatal("journal fold differs")
	}
	if s.Progress().Processing+s.Progress().Waiting+s.Progress().FailWaitRetry != 0 {
		t.Fatalf("not finished: %+v", s.Progress())
	}
}

// TestImports: the package imports only the standard library, messages and
// protobuf (the rule of internal/lint for every actors/*/*fsm package).
func TestImports(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	docs := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		if af.Doc != nil {
			docs++
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			first, _, _ := strings.Cut(p, "/")
			if strings.Contains(first, ".") && p != "github.com/otafleet/otafleet/messages" && !strings.HasPrefix(p, "google.golang.org/protobuf/") {
				t.Errorf("%s imports %s", f, p)
			}
		}
	}
	if docs != 1 {
		t.Errorf("%d files carry a package doc comment, want exactly 1 (doc.go)", docs)
	}
}

// TestRetryRequestedOldJournal: a RetryRequested journaled before
// keep_pending_retries existed replays as it was decided then (every re-run
// sub-task's automatic-retry budget restarts); one with the field keeps the
// budget a FAIL_WAIT_RETRY sub-task used.
func TestRetryRequestedOldJournal(t *testing.T) {
	cfg := DefaultConfig()
	c := validCreate("a")
	c.Policy = &messages.Policy{RetryCount: 2, RetryIntervalMinutes: 5}
	s, _ := mustStep(t, cfg, State{}, createInput(unitT0, c))
	s, _ = mustStep(t, cfg, s, &messages.TaskInput{AtUnixNano: unitT0.Add(time.Minute).UnixNano(), Kind: &messages.TaskInput_Outcome{Outcome: &messages.ReportOutcome{
		TaskId: "t1", DeviceId: "a", Attempt: 1, Status: messages.SubtaskStatus_SUBTASK_STATUS_FAIL, Reason: messages.Reason_REASON_LOW_BATTERY}}})
	if sub, _ := s.Subtask("a"); sub.Status != messages.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY || sub.AutoRetries != 1 {
		t.Fatalf("after a failure: %s; want FAIL_WAIT_RETRY auto_retries=1", fmtSubtask(sub))
	}
	at := unitT0.Add(2 * time.Minute).UnixNano()
	for _, tc := range []struct {
		keep bool
		want uint32
	}{{false, 0}, {true, 1}} {
		e := &messages.TaskEvent{AtUnixNano: at, Kind: &messages.TaskEvent_RetryRequested{RetryRequested: &messages.RetryRequested{KeepPendingRetries: tc.keep}}}
		got := Evolve(cloneState(s), e)
		if sub, _ := got.Subtask("a"); sub.Status != messages.SubtaskStatus_SUBTASK_STATUS_WAITING || sub.AutoRetries != tc.want {
			t.Errorf("RetryRequested keep_pending_retries=%v: %s; want WAITING auto_retries=%d", tc.keep, fmtSubtask(sub), tc.want)
		}
	}
}
