package taskfsm

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/otafleet/otafleet/messages"
)

// TestRandom drives tasks of ~200 devices with random outcomes (including
// stale and duplicate ones), stops, retries, wakes (valid and stale) and time
// jumps, with and without a window and MaxInFlight. After every step the
// helper step checks replay equivalence, counters against a full recount,
// Status against the spec 5.5 derivation, and no StartJob after a stop; here
// we also check that total is constant, attempts only grow by one per start,
// every sub-task's StartedAt is the time of its latest start (zero before the
// first), and that the whole journal folds to the final state.
func TestRandom(t *testing.T) {
	for seed := range uint64(16) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { randomRun(t, seed) })
	}
}

func randomRun(t *testing.T, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 0x7a5c))
	cfg := DefaultConfig()
	if seed%3 == 1 {
		cfg.MaxInFlight = 1 + r.IntN(40)
	}
	now := time.Date(2026, 3, 28, 0, 0, 0, 0, time.UTC).Add(time.Duration(r.IntN(48*60)) * time.Minute)
	n := 150 + r.IntN(100)
	c := &messages.CreateTask{
		TaskId: "t", TaskType: messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE, Protocol: messages.Protocol_PROTOCOL_LWM2M_PCP,
		Package: &messages.Package{PackageId: "p", Version: "9"},
		Policy:  &messages.Policy{},
	}
	for i := range n {
		c.DeviceIds = append(c.DeviceIds, fmt.Sprintf("dev-%03d", i))
	}
	if rc := r.IntN(6); rc > 0 {
		c.Policy.RetryCount = uint32(rc)
		c.Policy.RetryIntervalMinutes = uint32(1 + r.IntN(120))
	}
	if r.IntN(2) == 0 {
		c.Policy.ScheduleTimeUnixNano = now.Add(time.Duration(r.IntN(600)-120) * time.Minute).UnixNano()
	}
	if seed%2 == 0 {
		s := uint32(r.IntN(1440))
		e := (s + 30 + uint32(r.IntN(600))) % 1440
		c.Policy.Window = &messages.Window{StartMinute: s, EndMinute: e, TimeZone: []string{"", "Europe/Berlin", "Asia/Shanghai"}[r.IntN(3)]}
	}

	var s State
	var journal []*messages.TaskEvent
	attempts := map[string]uint32{}
	startedAt := map[string]time.Time{} // the model: the input time of each device's latest start
	do := func(in *messages.TaskInput) (Result, error) {
		in.AtUnixNano = now.UnixNano()
		before := s.Progress().Total
		ns, res, err := step(t, cfg, s, in)
		if err != nil && !errors.Is(err, ErrInvalidInput) && !errors.Is(err, ErrInvalidTransition) {
			t.Fatalf("unexpected error kind: %v", err)
		}
		s = ns
		journal = append(journal, res.Events...)
		if before != 0 && s.Progress().Total != before {
			t.Fatalf("total changed from %d to %d", before, s.Progress().Total)
		}
		for _, e := range res.Events {
			if st := e.GetSubtaskStarted(); st != nil {
				if st.GetAttempt() != attempts[st.GetDeviceId()]+1 {
					t.Fatalf("%s started attempt %d after %d", st.GetDeviceId(), st.GetAttempt(), attempts[st.GetDeviceId()])
				}
				attempts[st.GetDeviceId()] = st.GetAttempt()
				startedAt[st.GetDeviceId()] = now
			}
		}
		if len(res.Events) > 0 {
			for _, st := range s.Subtasks(0, 0) {
				if want := startedAt[st.DeviceID]; !st.StartedAt.Equal(want) || st.StartedAt.After(st.UpdatedAt) {
					t.Fatalf("%s: %s; want started=%v (not after updated)", st.DeviceID, fmtSubtask(st), want)
				}
			}
		}
		return res, err
	}
	if _, err := do(&messages.TaskInput{Kind: &messages.TaskInput_Create{Create: c}}); err != nil {
		t.Fatal(err)
	}
	statuses := []messages.SubtaskStatus{
		messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS, messages.SubtaskStatus_SUBTASK_STATUS_FAIL,
		messages.SubtaskStatus_SUBTASK_STATUS_FAIL, messages.SubtaskStatus_SUBTASK_STATUS_STOPPED,
	}
	pick := func(want messages.SubtaskStatus) (Subtask, bool) {
		var cands []int
		for i := range s.subs {
			if s.subs[i].status == want {
				cands = append(cands, i)
			}
		}
		if len(cands) == 0 {
			return Subtask{}, false
		}
		return s.subs[cands[r.IntN(len(cands))]].view(), true
	}
	for range 2000 {
		now = now.Add(time.Duration(r.IntN(20)) * time.Minute)
		switch op := r.IntN(100); {
		case op < 55: // outcome of a running sub-task, sometimes stale
			st, ok := pick(messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING)
			if !ok {
				st = s.Subtasks(r.IntN(n), 1)[0]
			}
			attempt := st.Attempt
			if r.IntN(10) == 0 {
				attempt = uint32(r.IntN(int(attempt) + 2))
			}
			do(&messages.TaskInput{Kind: &messages.TaskInput_Outcome{Outcome: &messages.ReportOutcome{
				TaskId: "t", DeviceId: st.DeviceID, Attempt: attempt, Status: statuses[r.IntN(len(statuses))],
				Reason: messages.Reason(r.IntN(36))}}})
		case op < 75: // the armed wake, at its time or early; sometimes a stale one
			at, gen := s.Wake()
			if !at.IsZero() && at.After(now) && r.IntN(4) != 0 {
				now = at
			}
			if r.IntN(5) == 0 {
				gen = uint64(r.IntN(int(gen) + 1))
			}
			do(&messages.TaskInput{Kind: &messages.TaskInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{Step: WakeStep, Generation: gen}}})
		case op < 83: // on-demand retry
			var ids []string
			for range r.IntN(4) {
				ids = append(ids, fmt.Sprintf("dev-%03d", r.IntN(n+2)))
			}
			do(&messages.TaskInput{Kind: &messages.TaskInput_Retry{Retry: &messages.RetryTask{DeviceIds: ids}}})
		case op < 85:
			if r.IntN(4) == 0 {
				do(&messages.TaskInput{Kind: &messages.TaskInput_Stop{Stop: &messages.StopTask{}}})
			}
		case op < 90: // a jump of hours
			now = now.Add(time.Duration(r.IntN(30)) * time.Hour)
		default: // an outcome for an unknown device: an error, state unchanged
			if _, err := do(&messages.TaskInput{Kind: &messages.TaskInput_Outcome{Outcome: &messages.ReportOutcome{
				TaskId: "t", DeviceId: "nope", Attempt: 1, Status: messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS}}}); err == nil {
				t.Fatal("outcome for an unknown device accepted")
			}
		}
		// Resume never panics and matches the state.
		effects := Resume(s)
		if at, _ := s.Wake(); !at.IsZero() && (len(effects) == 0 || effects[0].GetArmDeadline() == nil) {
			t.Fatalf("Resume did not re-arm the wake")
		}
	}
	if replayed := fold(State{}, journal); !sameState(replayed, s) {
		t.Fatalf("journal fold differs from the live state")
	}
	// Drain: every running sub-task succeeds, every wake fires; the task ends.
	for range 10000 {
		if st, ok := pick(messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING); ok {
			do(&messages.TaskInput{Kind: &messages.TaskInput_Outcome{Outcome: &messages.ReportOutcome{
				TaskId: "t", DeviceId: st.DeviceID, Attempt: st.Attempt, Status: messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS}}})
			continue
		}
		at, gen := s.Wake()
		if at.IsZero() {
			break
		}
		if at.After(now) {
			now = at
		}
		do(&messages.TaskInput{Kind: &messages.TaskInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{Step: WakeStep, Generation: gen}}})
	}
	if !s.Status().Final() {
		t.Fatalf("task did not finish: %s %+v", s.Status(), s.Progress())
	}
}
