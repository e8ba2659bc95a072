package cellfsm

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/otafleet/otafleet/messages"
)

// sameState compares two states exactly (nil and empty containers alike).
func sameState(a, b State) bool {
	return a.Cell == b.Cell && a.InUse == b.InUse && maps.Equal(a.Slots, b.Slots) && slices.Equal(a.Queue, b.Queue)
}

// randomRadio returns a mix of coverage: mostly good, some medium, poor,
// cell-only, missing values and nonsense.
func randomRadio(r *rand.Rand) (rsrp, sinr *int32, cellOnly bool) {
	switch p := r.IntN(100); {
	case p < 55:
		return i32(-105 + r.Int32N(62)), i32(7 + r.Int32N(24)), false // good
	case p < 70:
		return i32(-115 + r.Int32N(10)), i32(-3 + r.Int32N(34)), false // medium
	case p < 78:
		return i32(-125 + r.Int32N(10)), i32(r.Int32N(20)), false // poor
	case p < 86:
		return nil, nil, true // cell only
	case p < 90:
		return i32(-90), nil, false // missing SINR
	default:
		return i32(r.Int32N(300) - 200), i32(r.Int32N(80) - 40), false // anything
	}
}

// TestPropertyRandom drives thousands of random requests and releases over
// many devices and checks after every step: Check passes; the live state
// equals the fold of Evolve over all events; grants come out in queue order;
// admission is work-conserving (the head never fits after a step); and, once
// every holder releases, every request still waiting has been granted.
// Requests name jobs: a device's next job now and then, else a repeat of its
// current one, so holders ask for new jobs at other costs too (issue 20
// item 13).
func TestPropertyRandom(t *testing.T) {
	small := Config{
		RSRPMax: -44, RSRPGoodMin: -105, RSRPMediumMin: -115, RSRPPoorMin: -125,
		SINRMax: 30, SINRGoodMin: 7, SINRMediumMin: -3, SINRPoorMin: -8,
		Budget: 12, CostGood: 1, CostMedium: 4, CostPoor: 12, CostCellOnly: 3,
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		seed uint64
	}{{"default/1", DefaultConfig(), 1}, {"default/2", DefaultConfig(), 2}, {"small/3", small, 3}, {"small/4", small, 4}} {
		t.Run(tc.name, func(t *testing.T) { runProperty(t, tc.cfg, tc.seed, 200, 8000) })
	}
}

func runProperty(t *testing.T, cfg Config, seed uint64, nDevices, nSteps int) {
	r := rand.New(rand.NewPCG(seed, seed*7919))
	live, shadow := New("c1"), New("c1")
	var (
		order   []string // model FIFO: devices in PermitQueued order, minus withdrawals and grants
		granted = map[string]int{}
		queuedN int
		grants  int
		maxWait int
		topUps  int                   // holders that waited for a new job's units
		jobs    = map[string]uint32{} // each device's current job (attempt of task "t")
	)
	devs := make([]string, nDevices)
	for i := range devs {
		devs[i] = fmt.Sprintf("d%03d", i)
	}
	at := int64(0)

	apply := func(in *messages.CellInput, wantKind string) {
		t.Helper()
		at++
		req := in.GetRequestPermit()
		dev := req.GetDeviceId() + in.GetReleasePermit().GetDeviceId()
		job := Job{TaskID: req.GetTaskId(), Attempt: req.GetAttempt()}
		held, wasHolder := live.Slots[dev]
		qi := queued(live, dev)
		wasQueued := qi >= 0
		// A repeat of the job the device waits for, or a stale one of the
		// job it holds for while waiting, is ignored; a repeat of the job it
		// holds for (not waiting) gets its grant again.
		repeatWaiting := wasQueued && (live.Queue[qi].Job == job || wasHolder && held.Job == job)
		repeatHeld := !wasQueued && wasHolder && held.Job == job
		next, res, err := Step(cfg, live, in)
		if err != nil {
			t.Fatalf("step %d: %v", at, err)
		}
		live = next
		// Outcome class.
		switch {
		case wantKind == "request" && repeatHeld:
			if len(res.Events) != 0 || len(res.Effects) != 1 || res.Effects[0].GetGrant().GetDeviceId() != dev {
				t.Fatalf("step %d: re-request by holder %s: %s", at, dev, fmtResult(res))
			}
		case wantKind == "request" && repeatWaiting, wantKind == "release" && !wasHolder && !wasQueued:
			if len(res.Events)+len(res.Effects) != 0 {
				t.Fatalf("step %d: expected ignored for %s %s: %s", at, wantKind, dev, fmtResult(res))
			}
		default:
			if len(res.Events) == 0 {
				t.Fatalf("step %d: no events for %s %s", at, wantKind, dev)
			}
		}
		// Grants in queue order; one grant effect per granted event, same order.
		var grantsEv []string
		for _, e := range res.Events {
			if e.GetAtUnixNano() != at {
				t.Fatalf("step %d: event time %d", at, e.GetAtUnixNano())
			}
			switch k := e.GetKind().(type) {
			case *messages.CellEvent_PermitQueued:
				if !slices.Contains(order, dev) { // a waiting device keeps its place
					order = append(order, dev)
				}
				queuedN++
				if want := Cost(cfg, Classify(cfg, in.GetRequestPermit().Rsrp, in.GetRequestPermit().Sinr, in.GetRequestPermit().GetCellOnly())); k.PermitQueued.GetCost() != want {
					t.Fatalf("step %d: cost %d, want %d", at, k.PermitQueued.GetCost(), want)
				}
			case *messages.CellEvent_PermitGranted:
				d := k.PermitGranted.GetDeviceId()
				i := slices.Index(order, d)
				// Only the head is granted, or a holder whose new job costs
				// no more than it holds: that takes nothing from the queue.
				if i < 0 || i > 0 && !(wasHolder && d == dev && e == res.Events[1] && Cost(cfg, Classify(cfg, req.Rsrp, req.Sinr, req.GetCellOnly())) <= held.Cost) {
					t.Fatalf("step %d: granted %s out of order; queue %v", at, d, order)
				}
				order = slices.Delete(order, i, i+1)
				granted[d]++
				grants++
				grantsEv = append(grantsEv, d)
			case *messages.CellEvent_PermitReturned:
				if i := slices.Index(order, k.PermitReturned.GetDeviceId()); i >= 0 {
					order = slices.Delete(order, i, i+1)
				}
			}
			shadow = Evolve(shadow, e)
		}
		if len(res.Events) > 0 {
			var grantsEff []string
			for _, e := range res.Effects {
				if e.GetGrant().GetCellId() != "c1" {
					t.Fatalf("step %d: grant for cell %q", at, e.GetGrant().GetCellId())
				}
				grantsEff = append(grantsEff, e.GetGrant().GetDeviceId())
			}
			if !slices.Equal(grantsEv, grantsEff) {
				t.Fatalf("step %d: granted events %v, grant effects %v", at, grantsEv, grantsEff)
			}
		}
		if err := live.Check(cfg); err != nil {
			t.Fatalf("step %d: %v\n%s", at, err, dump(live))
		}
		if !sameState(shadow, live) {
			t.Fatalf("step %d: replay differs:\n%s\nlive:\n%s", at, dump(shadow), dump(live))
		}
		if !slices.EqualFunc(live.Queue, order, func(w Waiter, d string) bool { return w.DeviceID == d }) {
			t.Fatalf("step %d: queue differs from model %v\n%s", at, order, dump(live))
		}
		maxWait = max(maxWait, live.Waiting())
		if wasHolder && queued(live, dev) >= 0 {
			topUps++
		}
		if len(live.Queue) > 0 && fits(cfg, live) {
			t.Fatalf("step %d: head %s fits but waits\n%s", at, live.Queue[0].DeviceID, dump(live))
		}
	}

	holders := func() []string {
		ids := make([]string, 0, live.Holders())
		for id := range live.Slots {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		return ids
	}
	for range nSteps {
		if live.Holders() > 0 && r.IntN(100) < 35 {
			ids := holders()
			apply(relIn(at+1, "c1", ids[r.IntN(len(ids))]), "release")
			continue
		}
		dev := devs[r.IntN(len(devs))]
		waits := queued(live, dev) >= 0
		_, holds := live.Slots[dev]
		p := r.IntN(100)
		switch {
		case waits && p < 20, !holds && !waits && p < 5:
			apply(relIn(at+1, "c1", dev), "release")
		default:
			if r.IntN(100) < 15 || holds && r.IntN(100) < 50 {
				jobs[dev]++ // the device's next job (often a holder's: its release was lost)
			}
			rsrp, sinr, co := randomRadio(r)
			apply(reqJobIn(at+1, "c1", dev, "t", jobs[dev], rsrp, sinr, co), "request")
		}
		if r.IntN(500) == 0 { // a restart: replay from the journal's fold and resume
			eff := Resume(shadow)
			topUps := 0
			for id := range live.Slots {
				if queued(live, id) >= 0 {
					topUps++
				}
			}
			if len(eff) != live.Holders()-topUps {
				t.Fatalf("Resume gave %d grants for %d holders, %d of them waiting for a new job", len(eff), live.Holders(), topUps)
			}
			live = clone(shadow)
		}
	}
	if queuedN < nSteps/5 || grants < nSteps/5 || len(granted) < nDevices*9/10 || maxWait < 5 || topUps < 10 {
		t.Fatalf("weak test: %d queued, %d grants, %d devices granted, longest queue %d, %d holders waiting for a new job",
			queuedN, grants, len(granted), maxWait, topUps)
	}
	t.Logf("%d steps: %d queued, %d grants, %d devices granted, longest queue %d, %d holders waiting for a new job",
		at, queuedN, grants, len(granted), maxWait, topUps)
	// Drain: every holder eventually releases; nobody new asks. Every waiting
	// request must be granted: no starvation.
	waiting := slices.Clone(order)
	for live.Holders() > 0 {
		ids := holders()
		apply(relIn(at+1, "c1", ids[r.IntN(len(ids))]), "release")
	}
	if live.Waiting() != 0 || live.Used() != 0 {
		t.Fatalf("after drain: %s", dump(live))
	}
	for _, d := range waiting {
		if granted[d] == 0 {
			t.Fatalf("%s waited and was never granted", d)
		}
	}
}
