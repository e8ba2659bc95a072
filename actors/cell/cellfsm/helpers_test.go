package cellfsm

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/otafleet/otafleet/messages"
)

// t0 is the time "+0s" of transcripts.
var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func clone(s State) State {
	c := s
	c.Slots = maps.Clone(s.Slots)
	c.Queue = slices.Clone(s.Queue)
	return c
}

func levelName(l messages.CoverageLevel) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(l.String(), "COVERAGE_LEVEL_")), "_", "-")
}

func relTime(ns int64) string {
	if ns == 0 {
		return "0"
	}
	return "+" + messages.Time(ns).Sub(t0).String()
}

// fmtEvent prints an event in the compact transcript form.
func fmtEvent(e *messages.CellEvent) string {
	at := " @" + relTime(e.GetAtUnixNano())
	switch k := e.GetKind().(type) {
	case *messages.CellEvent_PermitQueued:
		q := k.PermitQueued
		return fmt.Sprintf("event queued   %s level=%s cost=%d%s%s", q.GetDeviceId(), levelName(q.GetLevel()), q.GetCost(),
			fmtJob(Job{TaskID: q.GetTaskId(), Attempt: q.GetAttempt()}), at)
	case *messages.CellEvent_PermitGranted:
		return fmt.Sprintf("event granted  %s%s", k.PermitGranted.GetDeviceId(), at)
	case *messages.CellEvent_PermitReturned:
		return fmt.Sprintf("event returned %s%s", k.PermitReturned.GetDeviceId(), at)
	default:
		return "event ?"
	}
}

// fmtJob prints " job=TASK#ATTEMPT", or nothing for the zero Job.
func fmtJob(j Job) string {
	if j == (Job{}) {
		return ""
	}
	return fmt.Sprintf(" job=%s#%d", j.TaskID, j.Attempt)
}

func fmtEffect(e *messages.CellEffect) string {
	if g := e.GetGrant(); g != nil {
		return fmt.Sprintf("effect grant   %s cell=%s", g.GetDeviceId(), g.GetCellId())
	}
	return "effect ?"
}

func fmtResult(res Result) string {
	var b strings.Builder
	for _, e := range res.Events {
		b.WriteString(fmtEvent(e) + "\n")
	}
	for _, e := range res.Effects {
		b.WriteString(fmtEffect(e) + "\n")
	}
	return b.String()
}

// dump is a canonical text form of a state, used to compare states.
func dump(s State) string {
	var b strings.Builder
	fmt.Fprintf(&b, "cell %q used %d holders %d waiting %d\n", s.Cell, s.InUse, len(s.Slots), len(s.Queue))
	for _, id := range slices.Sorted(maps.Keys(s.Slots)) {
		h := s.Slots[id]
		fmt.Fprintf(&b, "hold %s level=%s cost=%d%s\n", id, levelName(h.Level), h.Cost, fmtJob(h.Job))
	}
	for i, w := range s.Queue {
		fmt.Fprintf(&b, "wait %d %s level=%s cost=%d%s\n", i+1, w.DeviceID, levelName(w.Level), w.Cost, fmtJob(w.Job))
	}
	return b.String()
}

// step runs Step and checks replay equivalence: the events of the result,
// folded with Evolve onto a copy of the prior state, give the returned state.
// On error it checks that the state is unchanged and the result empty.
func step(t *testing.T, cfg Config, s State, in *messages.CellInput) (State, Result, error) {
	t.Helper()
	prior := clone(s)
	before := dump(s)
	var (
		next State
		res  Result
		err  error
	)
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("Step panicked on %v: %v", in, r)
			}
		}()
		next, res, err = Step(cfg, s, in)
	}()
	if err != nil {
		if got := dump(next); got != before {
			t.Fatalf("Step returned a modified state with error %v:\n%s\nwant\n%s", err, got, before)
		}
		if len(res.Events) != 0 || len(res.Effects) != 0 {
			t.Fatalf("Step returned events/effects with error %v", err)
		}
		return next, res, err
	}
	for _, e := range res.Events {
		prior = Evolve(prior, e)
	}
	if got, want := dump(prior), dump(next); got != want {
		t.Fatalf("replay mismatch after %v:\nfold:\n%s\nlive:\n%s", in, got, want)
	}
	return next, res, nil
}

func reqIn(at int64, cell, dev string, rsrp, sinr *int32, cellOnly bool) *messages.CellInput {
	return reqJobIn(at, cell, dev, "", 0, rsrp, sinr, cellOnly)
}

// reqJobIn is a request naming its job.
func reqJobIn(at int64, cell, dev, task string, attempt uint32, rsrp, sinr *int32, cellOnly bool) *messages.CellInput {
	return &messages.CellInput{AtUnixNano: at, Kind: &messages.CellInput_RequestPermit{
		RequestPermit: &messages.RequestPermit{CellId: cell, DeviceId: dev, Rsrp: rsrp, Sinr: sinr, CellOnly: cellOnly, TaskId: task, Attempt: attempt},
	}}
}

func relIn(at int64, cell, dev string) *messages.CellInput {
	return &messages.CellInput{AtUnixNano: at, Kind: &messages.CellInput_ReleasePermit{
		ReleasePermit: &messages.ReleasePermit{CellId: cell, DeviceId: dev},
	}}
}

func i32(v int32) *int32 { return &v }
