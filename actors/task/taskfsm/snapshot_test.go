package taskfsm

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/messages"
)

var deterministic = proto.MarshalOptions{Deterministic: true}

func snapshotBytes(t testing.TB, s State) []byte {
	t.Helper()
	b, err := deterministic.Marshal(Snapshot(s))
	if err != nil {
		t.Fatalf("marshal snapshot: %v", err)
	}
	return b
}

func restore(t testing.TB, b []byte) State {
	t.Helper()
	p := &messages.TaskSnapshot{}
	if err := proto.Unmarshal(b, p); err != nil {
		t.Fatalf("unmarshal snapshot: %v", err)
	}
	s, err := FromSnapshot(p)
	if err != nil {
		t.Fatalf("FromSnapshot: %v", err)
	}
	return s
}

// canon drops what a snapshot leaves out on purpose: stale queue entries
// (and the heads that skip them), the time zone cache, and the numbers of
// the entries into WAITING, of which it keeps only the order (the WAITING
// sub-tasks are numbered 1, 2, ... in queue order, the others 0).
func canon(s State) State {
	c := canonQueues(s)
	c.subs = slices.Clone(c.subs)
	for i := range c.subs {
		c.subs[i].enq = 0
	}
	for k, q := range c.waiting {
		c.subs[q.idx].enq = uint64(k) + 1
	}
	c.enqs = uint64(len(c.waiting))
	return c
}

// canonQueues drops stale queue entries and the heads that skip them.
func canonQueues(s State) State {
	c := cloneState(s)
	var w, r []queued
	for _, q := range s.waiting[s.waitHead:] {
		if s.waitingValid(q) {
			w = append(w, q)
		}
	}
	for _, q := range s.retries[s.retryHead:] {
		if s.retryValid(q) {
			r = append(r, q)
		}
	}
	c.waiting, c.waitHead, c.retries, c.retryHead = w, 0, r, 0
	return c
}

// equalState: equal task definitions, and sameState (every field, by
// reflection for the small ones) of the canonical forms.
func equalState(a, b State) bool {
	if !proto.Equal(a.task, b.task) {
		return false
	}
	ca, cb := canon(a), canon(b)
	ca.task, cb.task = nil, nil
	return sameState(ca, cb)
}

func sameResult(a, b Result) bool {
	return slices.EqualFunc(a.Events, b.Events, func(x, y *messages.TaskEvent) bool { return proto.Equal(x, y) }) &&
		slices.EqualFunc(a.Effects, b.Effects, func(x, y *messages.TaskEffect) bool { return proto.Equal(x, y) })
}

func checkRoundTrip(t *testing.T, name string, s State) State {
	t.Helper()
	b := snapshotBytes(t, s)
	r := restore(t, b)
	if !equalState(s, r) {
		t.Fatalf("%s: restored state differs\noriginal: %s %+v\nrestored: %s %+v", name, fmtProgress(s), canon(s), fmtProgress(r), canon(r))
	}
	checkInvariants(t, r)
	// The views callers read (ListTaskDevices) agree too, start times
	// included, and the snapshot carries each start time as written.
	p := Snapshot(s)
	for i, want := range s.Subtasks(0, 0) {
		got, _ := r.Subtask(want.DeviceID)
		if !got.StartedAt.Equal(want.StartedAt) || !got.UpdatedAt.Equal(want.UpdatedAt) || got.Attempt != want.Attempt {
			t.Fatalf("%s: sub-task restored as %s, was %s", name, fmtSubtask(got), fmtSubtask(want))
		}
		if ns := p.GetSubtasks()[i].GetStartedAtUnixNano(); ns != messages.UnixNano(want.StartedAt) {
			t.Fatalf("%s: %s: started_at_unix_nano %d, want %v", name, want.DeviceID, ns, want.StartedAt)
		}
	}
	if b2 := snapshotBytes(t, r); !bytes.Equal(b, b2) {
		t.Fatalf("%s: the restored state encodes differently", name)
	}
	if !sameResult(Result{Effects: Resume(s)}, Result{Effects: Resume(r)}) {
		t.Fatalf("%s: Resume differs after restore", name)
	}
	return r
}

// taskWalker makes the inputs of TestRandom from its own generator: outcomes
// (some stale), wakes (some early or stale), on-demand retries, rare stops
// and time jumps.
type taskWalker struct {
	r   *rand.Rand
	now time.Time
	n   int
}

func newTaskWalker(seed uint64, now time.Time, n int) *taskWalker {
	return &taskWalker{r: rand.New(rand.NewPCG(seed, 0x5a9)), now: now, n: n}
}

func (w *taskWalker) devID(i int) string { return fmt.Sprintf("dev-%03d", i) }

func (w *taskWalker) next(s State) *messages.TaskInput {
	r := w.r
	w.now = w.now.Add(time.Duration(r.IntN(20)) * time.Minute)
	in := &messages.TaskInput{}
	switch op := r.IntN(100); {
	case op < 60:
		var running []int
		for i := range s.subs {
			if s.subs[i].status == messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING {
				running = append(running, i)
			}
		}
		i := r.IntN(w.n)
		if len(running) > 0 {
			i = running[r.IntN(len(running))]
		}
		attempt := s.subs[i].attempt
		if r.IntN(10) == 0 {
			attempt = uint32(r.IntN(int(attempt) + 2))
		}
		statuses := []messages.SubtaskStatus{
			messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS, messages.SubtaskStatus_SUBTASK_STATUS_FAIL,
			messages.SubtaskStatus_SUBTASK_STATUS_FAIL, messages.SubtaskStatus_SUBTASK_STATUS_STOPPED,
		}
		in.Kind = &messages.TaskInput_Outcome{Outcome: &messages.ReportOutcome{
			TaskId: "t", DeviceId: s.subs[i].id, Attempt: attempt, Status: statuses[r.IntN(len(statuses))],
			Reason: messages.Reason(r.IntN(36)), Detail: fmt.Sprint("d", r.IntN(3)), ResultCode: int32(r.IntN(3)),
			DeviceDescription: fmt.Sprint("desc", r.IntN(3))}}
	case op < 82:
		at, gen := s.Wake()
		if !at.IsZero() && at.After(w.now) && r.IntN(4) != 0 {
			w.now = at
		}
		if r.IntN(5) == 0 {
			gen = uint64(r.IntN(int(gen) + 1))
		}
		in.Kind = &messages.TaskInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{Step: WakeStep, Generation: gen}}
	case op < 94:
		var ids []string
		for range r.IntN(4) {
			ids = append(ids, w.devID(r.IntN(w.n)))
		}
		in.Kind = &messages.TaskInput_Retry{Retry: &messages.RetryTask{DeviceIds: ids}}
	case op < 95 && r.IntN(3) == 0:
		in.Kind = &messages.TaskInput_Stop{Stop: &messages.StopTask{}}
	default:
		w.now = w.now.Add(time.Duration(r.IntN(30)) * time.Hour)
		in.Kind = &messages.TaskInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{Step: WakeStep}}
	}
	in.AtUnixNano = w.now.UnixNano()
	return in
}

// walkCreate is the task of walk seed: retries, and for some seeds a
// schedule time, a window in a zone with daylight saving, or MaxInFlight.
func walkCreate(seed uint64, now time.Time, n int) (Config, *messages.TaskInput) {
	r := rand.New(rand.NewPCG(seed, 0xc0de))
	cfg := DefaultConfig()
	if seed%3 != 0 {
		cfg.MaxInFlight = 1 + r.IntN(15)
	}
	c := &messages.CreateTask{
		TaskId: "t", Name: "walk", TaskType: messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE, Protocol: messages.Protocol_PROTOCOL_LWM2M_PCP,
		Package: &messages.Package{PackageId: "p", Version: "9", SourceVersions: []string{"8"}}, GroupIds: []string{"g"},
		Policy: &messages.Policy{RetryCount: uint32(1 + r.IntN(5)), RetryIntervalMinutes: uint32(1 + r.IntN(120))},
	}
	for i := range n {
		c.DeviceIds = append(c.DeviceIds, fmt.Sprintf("dev-%03d", i))
	}
	c.GroupMembers = []string{"dev-000", "dev-extra"} // one duplicate, one more
	if seed%2 == 0 {
		c.Policy.ScheduleTimeUnixNano = now.Add(time.Duration(r.IntN(300)) * time.Minute).UnixNano()
		s := uint32(r.IntN(1440))
		c.Policy.Window = &messages.Window{StartMinute: s, EndMinute: (s + 60 + uint32(r.IntN(600))) % 1440, TimeZone: "Europe/Berlin"}
	}
	return cfg, &messages.TaskInput{AtUnixNano: now.UnixNano(), Kind: &messages.TaskInput_Create{Create: c}}
}

// continueBoth steps the original and the restored state with the same
// inputs and requires identical results and states all along.
func continueBoth(t *testing.T, name string, cfg Config, orig, restored State, seed uint64, now time.Time, n, steps int) {
	t.Helper()
	a, b := cloneState(orig), restored
	wa, wb := newTaskWalker(seed, now, n), newTaskWalker(seed, now, n)
	for i := range steps {
		ina, inb := wa.next(a), wb.next(b)
		na, ra, erra := Step(cfg, a, ina)
		nb, rb, errb := Step(cfg, b, inb)
		if fmt.Sprint(erra) != fmt.Sprint(errb) || !sameResult(ra, rb) {
			var sa, sb strings.Builder
			fmtResult(&sa, ra)
			fmtResult(&sb, rb)
			t.Fatalf("%s: step %d after restore differs on %v\noriginal: %v\n%s\nrestored: %v\n%s", name, i, ina, erra, sa.String(), errb, sb.String())
		}
		a, b = na, nb
		if !equalState(a, b) {
			t.Fatalf("%s: step %d after restore: states differ", name, i)
		}
	}
}

// TestSnapshotRoundTrip snapshots every fourth state of random task walks (with
// and without window, schedule and MaxInFlight): the restored state equals
// the original up to stale queue entries (every sub-task field, the start
// time of its latest attempt too, also some after retries), passes the
// invariants, encodes to the same bytes and resumes the same; every hundred steps a fork continues
// both with the same inputs and sees exactly the same events and effects.
func TestSnapshotRoundTrip(t *testing.T) {
	checkRoundTrip(t, "not created", State{})
	reordered := 0 // states whose start order is not the target order
	restarted := 0 // states with a sub-task whose latest start is a retry's
	for seed := range uint64(6) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			const n = 80
			now := time.Date(2026, 3, 28, 0, 0, 0, 0, time.UTC).Add(time.Duration(seed) * 7 * time.Hour)
			cfg, create := walkCreate(seed, now, n)
			s, _, err := Step(cfg, State{}, create)
			if err != nil {
				t.Fatal(err)
			}
			w := newTaskWalker(seed, now, n)
			for i := range 1000 {
				next, _, err := Step(cfg, s, w.next(s))
				if err == nil {
					s = next
				}
				if i%4 != 0 {
					continue
				}
				name := fmt.Sprintf("seed %d step %d", seed, i)
				r := checkRoundTrip(t, name, s)
				if !slices.IsSorted(Snapshot(s).GetWaiting()) {
					reordered++
				}
				for _, st := range r.Subtasks(0, 0) {
					if st.Attempt > 1 && !st.StartedAt.IsZero() {
						restarted++
						break
					}
				}
				if i%100 == 0 {
					continueBoth(t, name, cfg, s, r, seed<<32|uint64(i), w.now, n, 60)
				}
			}
		})
	}
	if reordered == 0 {
		t.Error("weak test: the waiting order always equals the target order")
	}
	if restarted == 0 {
		t.Error("weak test: no snapshot holds the start time of a retried attempt")
	}
}

// TestSnapshotDeterministic: equal states encode to equal bytes, whether
// built live, replayed from the journal or restored.
func TestSnapshotDeterministic(t *testing.T) {
	now := time.Date(2026, 3, 28, 0, 0, 0, 0, time.UTC)
	cfg, create := walkCreate(1, now, 50)
	s, res, err := Step(cfg, State{}, create)
	if err != nil {
		t.Fatal(err)
	}
	journal := res.Events
	w := newTaskWalker(9, now, 50)
	for i := range 1000 {
		next, res, err := Step(cfg, s, w.next(s))
		if err != nil {
			continue
		}
		s = next
		journal = append(journal, res.Events...)
		if i%25 != 0 {
			continue
		}
		b := snapshotBytes(t, s)
		if !bytes.Equal(b, snapshotBytes(t, cloneState(s))) {
			t.Fatalf("step %d: two encodings of one state differ", i)
		}
		if !bytes.Equal(b, snapshotBytes(t, fold(State{}, journal))) {
			t.Fatalf("step %d: live and replayed states encode differently", i)
		}
	}
}

// validSnapshot: a with MaxInFlight 1, a failed once and waits for its
// retry, b runs, c and d wait; the window is in Asia/Shanghai.
func validSnapshot(t testing.TB) *messages.TaskSnapshot {
	cfg := DefaultConfig()
	cfg.MaxInFlight = 1
	c := validCreate("a", "b", "c", "a", "d")
	c.Policy = &messages.Policy{RetryCount: 1, RetryIntervalMinutes: 5, Window: &messages.Window{StartMinute: 0, EndMinute: 1439, TimeZone: "Asia/Shanghai"}}
	s, _, err := Step(cfg, State{}, createInput(unitT0, c))
	if err != nil {
		t.Fatal(err)
	}
	s, _, err = Step(cfg, s, &messages.TaskInput{AtUnixNano: unitT0.Add(time.Minute).UnixNano(), Kind: &messages.TaskInput_Outcome{
		Outcome: &messages.ReportOutcome{TaskId: "t1", DeviceId: "a", Attempt: 1, Status: messages.SubtaskStatus_SUBTASK_STATUS_FAIL}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmtProgress(s); got != "status: PROCESSING total=4 waiting=2 processing=1 success=0 fail=0 fail_wait_retry=1 stopped=0" {
		t.Fatalf("valid snapshot state: %s", got)
	}
	return proto.Clone(Snapshot(s)).(*messages.TaskSnapshot)
}

// TestFromSnapshotInvalid: each broken snapshot is refused with a clear
// ErrInvalidSnapshot naming the problem.
func TestFromSnapshotInvalid(t *testing.T) {
	s, err := FromSnapshot(validSnapshot(t))
	if err != nil {
		t.Fatalf("valid snapshot refused: %v", err)
	}
	checkInvariants(t, s)
	if s.loc == nil || s.loc.String() != "Asia/Shanghai" {
		t.Errorf("time zone not loaded: %v", s.loc)
	}
	type snap = messages.TaskSnapshot
	cases := []struct {
		name string
		mut  func(p *snap)
		want string
	}{
		{"fields without task", func(p *snap) { p.Task = nil }, "fields set without a task"},
		{"wake without task", func(p *snap) { *p = snap{WakeGeneration: 1} }, "fields set without a task"},
		{"no task id", func(p *snap) { p.Task.TaskId = "" }, "task.task_id is empty"},
		{"task type", func(p *snap) { p.Task.TaskType = 9 }, "task.task_type 9 is unknown"},
		{"protocol", func(p *snap) { p.Task.Protocol = 9 }, "task.protocol 9 is unknown"},
		{"window", func(p *snap) { p.Task.Policy.Window.EndMinute = 1440 }, "not within 0..1439"},
		{"zone", func(p *snap) { p.Task.Policy.Window.TimeZone = "Mars/Olympus" }, `time_zone "Mars/Olympus"`},
		{"local zone", func(p *snap) { p.Task.Policy.Window.TimeZone = "Local" }, `time_zone "Local"`},
		{"too few sub-tasks", func(p *snap) { p.Subtasks = p.Subtasks[:3] }, "3 sub-tasks for 4 distinct targets"},
		{"too many sub-tasks", func(p *snap) { p.Task.Targets = p.Task.Targets[:3] }, "4 sub-tasks for 3 distinct targets"},
		{"nil sub-task", func(p *snap) { p.Subtasks[2] = nil }, `sub-task "c" is empty`},
		{"unset status", func(p *snap) { p.Subtasks[3].Status = 0 }, `sub-task "d" has status SUBTASK_STATUS_UNSPECIFIED`},
		{"unknown status", func(p *snap) { p.Subtasks[3].Status = 42 }, `sub-task "d" has status 42`},
		{"reason", func(p *snap) { p.Subtasks[0].Reason = 999 }, "unknown reason 999"},
		{"retry without time", func(p *snap) { p.Subtasks[0].RetryAtUnixNano = 0 }, `sub-task "a" is SUBTASK_STATUS_FAIL_WAIT_RETRY with retry_at 0`},
		{"time without retry", func(p *snap) { p.Subtasks[2].RetryAtUnixNano = 5 }, `sub-task "c" is SUBTASK_STATUS_WAITING with retry_at 5`},
		{"not started", func(p *snap) { p.Started = false }, "started is not set"},
		{"started", func(p *snap) {
			for _, st := range p.Subtasks {
				st.Attempt = 0
			}
		}, "started is set but no sub-task"},
		{"counter", func(p *snap) { p.Progress.Success++ }, "does not match the sub-tasks"},
		{"no counters", func(p *snap) { p.Progress = nil }, "does not match the sub-tasks"},
		{"waiting short", func(p *snap) { p.Waiting = p.Waiting[:1] }, "waiting lists 1 sub-tasks, 2 are WAITING"},
		{"waiting range", func(p *snap) { p.Waiting[1] = 4 }, "waiting[1] = 4 is not a sub-task position (0..3)"},
		{"waiting status", func(p *snap) { p.Waiting[0] = 1 }, `waiting[0]: sub-task "b" is SUBTASK_STATUS_PROCESSING`},
		{"waiting twice", func(p *snap) { p.Waiting[1] = p.Waiting[0] }, "listed twice"},
	}
	if _, err := FromSnapshot(nil); !errors.Is(err, ErrInvalidSnapshot) || !strings.Contains(err.Error(), "nil") {
		t.Errorf("nil snapshot: %v", err)
	}
	for _, c := range cases {
		p := validSnapshot(t)
		c.mut(p)
		_, err := FromSnapshot(p)
		if !errors.Is(err, ErrInvalidSnapshot) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want ErrInvalidSnapshot mentioning %q", c.name, err, c.want)
		}
	}
}

// FuzzFromSnapshot decodes arbitrary bytes as a snapshot: FromSnapshot never
// panics, refuses with ErrInvalidSnapshot, and what it accepts passes the
// invariants, round-trips, resumes, and steps by the usual conventions.
func FuzzFromSnapshot(f *testing.F) {
	f.Add(snapshotBytes(f, State{}))
	b, err := deterministic.Marshal(validSnapshot(f))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	now := time.Date(2026, 3, 28, 0, 0, 0, 0, time.UTC)
	cfg, create := walkCreate(2, now, 6)
	s, _, err := Step(cfg, State{}, create)
	if err != nil {
		f.Fatal(err)
	}
	w := newTaskWalker(3, now, 6)
	for i := range 60 {
		if next, _, err := Step(cfg, s, w.next(s)); err == nil {
			s = next
		}
		if i%6 == 0 {
			f.Add(snapshotBytes(f, s))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p := &messages.TaskSnapshot{}
		if proto.Unmarshal(b, p) != nil {
			return
		}
		s, err := FromSnapshot(p)
		if err != nil {
			if !errors.Is(err, ErrInvalidSnapshot) {
				t.Fatalf("error %v does not wrap ErrInvalidSnapshot", err)
			}
			return
		}
		checkInvariants(t, s)
		if r := restore(t, snapshotBytes(t, s)); !equalState(s, r) {
			t.Fatalf("second round trip differs")
		}
		_ = Resume(s)
		if !s.Created() {
			return
		}
		at, gen := s.Wake()
		id := ""
		if len(s.subs) > 0 {
			id = s.subs[0].id
		}
		for _, in := range []*messages.TaskInput{
			{Kind: &messages.TaskInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{Step: WakeStep, Generation: gen}}},
			{Kind: &messages.TaskInput_Outcome{Outcome: &messages.ReportOutcome{TaskId: s.TaskID(), DeviceId: id, Attempt: 1,
				Status: messages.SubtaskStatus_SUBTASK_STATUS_FAIL}}},
			{Kind: &messages.TaskInput_Retry{Retry: &messages.RetryTask{}}},
			{Kind: &messages.TaskInput_Stop{Stop: &messages.StopTask{}}},
		} {
			in.AtUnixNano = max(at.UnixNano(), 1)
			if next, _, err := step(t, DefaultConfig(), s, in); err == nil {
				s = next
			}
		}
	})
}
