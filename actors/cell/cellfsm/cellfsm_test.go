package cellfsm

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

func TestValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	for name, mut := range map[string]func(*Config){
		"rsrp poor >= medium":  func(c *Config) { c.RSRPPoorMin = c.RSRPMediumMin },
		"rsrp medium >= good":  func(c *Config) { c.RSRPMediumMin = c.RSRPGoodMin },
		"rsrp good > max":      func(c *Config) { c.RSRPMax = c.RSRPGoodMin - 1 },
		"sinr poor >= medium":  func(c *Config) { c.SINRPoorMin = c.SINRMediumMin },
		"sinr medium >= good":  func(c *Config) { c.SINRMediumMin = c.SINRGoodMin + 1 },
		"sinr good > max":      func(c *Config) { c.SINRMax = 0 },
		"zero budget":          func(c *Config) { c.Budget = 0 },
		"zero good cost":       func(c *Config) { c.CostGood = 0 },
		"medium cost > budget": func(c *Config) { c.CostMedium = 51 },
		"zero poor cost":       func(c *Config) { c.CostPoor = 0 },
		"cell-only > budget":   func(c *Config) { c.CostCellOnly = 99 },
	} {
		c := DefaultConfig()
		mut(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: got %v, want ErrInvalidConfig", name, err)
		}
	}
	c := DefaultConfig()
	c.RSRPGoodMin, c.RSRPMax = -50, -50 // good range of one value is allowed
	if err := c.Validate(); err != nil {
		t.Errorf("good == max: %v", err)
	}
}

func TestClassify(t *testing.T) {
	const (
		good = messages.CoverageLevel_COVERAGE_LEVEL_GOOD
		med  = messages.CoverageLevel_COVERAGE_LEVEL_MEDIUM
		poor = messages.CoverageLevel_COVERAGE_LEVEL_POOR
		cell = messages.CoverageLevel_COVERAGE_LEVEL_CELL_ONLY
	)
	type graded struct {
		level   messages.CoverageLevel
		outside bool // outside every range: nonsense, poor whatever else is known
	}
	cfg := DefaultConfig()
	// Every edge of spec 1.3: each bound, one on either side, and nonsense.
	rsrp := map[int32]graded{
		100: {poor, true}, 0: {poor, true}, -43: {poor, true}, -44: {good, false}, -80: {good, false},
		-105: {good, false}, -106: {med, false}, -115: {med, false}, -116: {poor, false},
		-125: {poor, false}, -126: {poor, true}, -200: {poor, true},
	}
	sinr := map[int32]graded{
		50: {poor, true}, 31: {poor, true}, 30: {good, false}, 7: {good, false}, 6: {med, false},
		-3: {med, false}, -4: {poor, false}, -8: {poor, false}, -9: {poor, true},
	}
	// onlyCell is what a device whose radio read lacked a value or failed is
	// graded, given the values it has: poor if one of them is nonsense
	// (issue 20 item 1, decision 7), else cell-only.
	onlyCell := func(gs ...graded) messages.CoverageLevel {
		for _, g := range gs {
			if g.outside {
				return poor
			}
		}
		return cell
	}
	for r, rg := range rsrp {
		for s, sg := range sinr {
			if got, want := Classify(cfg, i32(r), i32(s), false), max(rg.level, sg.level); got != want {
				t.Errorf("Classify(%d, %d) = %v, want %v", r, s, got, want)
			}
			if got, want := Classify(cfg, i32(r), i32(s), true), onlyCell(rg, sg); got != want {
				t.Errorf("Classify(%d, %d, cellOnly) = %v, want %v", r, s, got, want)
			}
		}
		if got, want := Classify(cfg, i32(r), nil, false), onlyCell(rg); got != want {
			t.Errorf("Classify(%d, nil) = %v, want %v", r, got, want)
		}
		if got, want := Classify(cfg, i32(r), nil, true), onlyCell(rg); got != want {
			t.Errorf("Classify(%d, nil, cellOnly) = %v, want %v", r, got, want)
		}
	}
	for s, sg := range sinr {
		if got, want := Classify(cfg, nil, i32(s), false), onlyCell(sg); got != want {
			t.Errorf("Classify(nil, %d) = %v, want %v", s, got, want)
		}
	}
	for _, cellOnly := range []bool{false, true} {
		if got := Classify(cfg, nil, nil, cellOnly); got != cell {
			t.Errorf("Classify(nil, nil, %v) = %v, want %v", cellOnly, got, cell)
		}
	}
	// The real client of issue 20: RSRP 80 "dBm", no SINR, cell ID read.
	if got := Classify(cfg, i32(80), nil, true); got != poor || Cost(cfg, got) != 50 {
		t.Errorf("Classify(80, nil, cellOnly) = %v costing %d, want poor costing 50", got, Cost(cfg, got))
	}
}

func TestCost(t *testing.T) {
	cfg := DefaultConfig()
	for l, want := range map[messages.CoverageLevel]uint32{
		messages.CoverageLevel_COVERAGE_LEVEL_GOOD:        1,
		messages.CoverageLevel_COVERAGE_LEVEL_MEDIUM:      5,
		messages.CoverageLevel_COVERAGE_LEVEL_POOR:        50,
		messages.CoverageLevel_COVERAGE_LEVEL_CELL_ONLY:   5,
		messages.CoverageLevel_COVERAGE_LEVEL_UNSPECIFIED: 50,
		messages.CoverageLevel(99):                        50,
	} {
		if got := Cost(cfg, l); got != want {
			t.Errorf("Cost(%v) = %d, want %d", l, got, want)
		}
	}
	cfg.CostPoor = 80 // invalid config: clamped to the budget
	if got := Cost(cfg, messages.CoverageLevel_COVERAGE_LEVEL_POOR); got != 50 {
		t.Errorf("Cost over budget = %d, want 50", got)
	}
}

func TestStepErrors(t *testing.T) {
	bad := DefaultConfig()
	bad.Budget = 0
	s := build(t, "req a -90 10", "req p -120 10")
	for _, tc := range []struct {
		name string
		cfg  Config
		s    State
		in   *messages.CellInput
		want error
	}{
		{"invalid config", bad, s, reqIn(1, "c1", "d", i32(-90), i32(10), false), ErrInvalidConfig},
		{"nil input", DefaultConfig(), s, nil, ErrInvalidInput},
		{"no kind", DefaultConfig(), s, &messages.CellInput{AtUnixNano: 1}, ErrInvalidInput},
		{"nil request", DefaultConfig(), s, &messages.CellInput{Kind: &messages.CellInput_RequestPermit{}}, ErrInvalidInput},
		{"nil release", DefaultConfig(), s, &messages.CellInput{Kind: &messages.CellInput_ReleasePermit{}}, ErrInvalidInput},
		{"request no device", DefaultConfig(), s, reqIn(1, "c1", "", i32(-90), i32(10), false), ErrInvalidInput},
		{"request no cell", DefaultConfig(), s, reqIn(1, "", "d", i32(-90), i32(10), false), ErrInvalidInput},
		{"request other cell", DefaultConfig(), s, reqIn(1, "c2", "a", i32(-90), i32(10), false), ErrInvalidInput},
		{"release no device", DefaultConfig(), s, relIn(1, "c1", ""), ErrInvalidInput},
		{"release no cell", DefaultConfig(), s, relIn(1, "", "a"), ErrInvalidInput},
		{"release other cell", DefaultConfig(), s, relIn(1, "c2", "a"), ErrInvalidInput},
		{"zero state", DefaultConfig(), State{}, reqIn(1, "c1", "d", i32(-90), i32(10), false), ErrNoCell},
	} {
		_, _, err := step(t, tc.cfg, tc.s, tc.in) // also checks s unchanged and empty result
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestEvolveTotal(t *testing.T) {
	base := build(t, "req a -90 10", "req p -120 10", "req b -90 10")
	ev := func(k any) *messages.CellEvent {
		switch k := k.(type) {
		case *messages.PermitQueued:
			return &messages.CellEvent{Kind: &messages.CellEvent_PermitQueued{PermitQueued: k}}
		case *messages.PermitGrantedToDevice:
			return &messages.CellEvent{Kind: &messages.CellEvent_PermitGranted{PermitGranted: k}}
		case *messages.PermitReturned:
			return &messages.CellEvent{Kind: &messages.CellEvent_PermitReturned{PermitReturned: k}}
		}
		return nil
	}
	for name, e := range map[string]*messages.CellEvent{
		"nil":                 nil,
		"no kind":             {AtUnixNano: 5},
		"nil queued":          {Kind: &messages.CellEvent_PermitQueued{}},
		"nil granted":         {Kind: &messages.CellEvent_PermitGranted{}},
		"nil returned":        {Kind: &messages.CellEvent_PermitReturned{}},
		"queued empty id":     ev(&messages.PermitQueued{Cost: 1}),
		"granted not waiting": ev(&messages.PermitGrantedToDevice{DeviceId: "zz"}),
		"granted holder":      ev(&messages.PermitGrantedToDevice{DeviceId: "a"}),
		"returned unknown":    ev(&messages.PermitReturned{DeviceId: "zz"}),
	} {
		before := dump(base)
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%s: panic %v", name, r)
				}
			}()
			if got := dump(Evolve(clone(base), e)); got != before {
				t.Errorf("%s changed the state:\n%s", name, got)
			}
		}()
	}
	// The zero State accepts events too; a grant creates the map.
	var z State
	z = Evolve(z, ev(&messages.PermitQueued{DeviceId: "a", Cost: 3}))
	z = Evolve(z, ev(&messages.PermitGrantedToDevice{DeviceId: "a"}))
	if z.Used() != 3 || z.Holders() != 1 || z.Waiting() != 0 {
		t.Errorf("zero state fold: %s", dump(z))
	}
	// Saturating add and no underflow on corrupt costs.
	z = Evolve(z, ev(&messages.PermitQueued{DeviceId: "big", Cost: ^uint32(0)}))
	z = Evolve(z, ev(&messages.PermitGrantedToDevice{DeviceId: "big"}))
	if z.Used() != ^uint32(0) {
		t.Errorf("saturating add: %d", z.Used())
	}
	z = Evolve(z, ev(&messages.PermitReturned{DeviceId: "big"}))
	z = Evolve(z, ev(&messages.PermitReturned{DeviceId: "a"}))
	if z.Used() != 0 || z.Holders() != 0 {
		t.Errorf("after returns: %s", dump(z))
	}
}

// TestEvolveNewJob: the events of a new job's request for a device the cell
// knows (issue 20 item 13). A queueing of a waiting device replaces its
// request in its place; one of a holder adds it to the tail; a grant of a
// holder replaces its slot and counts only the difference; a return drops
// both the slot and the request.
func TestEvolveNewJob(t *testing.T) {
	base := build(t, "req a -90 10", "req p -120 10", "req b -90 10")
	poor := messages.CoverageLevel_COVERAGE_LEVEL_POOR
	queued := func(dev string, cost uint32, task string) *messages.CellEvent {
		return &messages.CellEvent{Kind: &messages.CellEvent_PermitQueued{PermitQueued: &messages.PermitQueued{
			DeviceId: dev, Level: poor, Cost: cost, TaskId: task, Attempt: 2,
		}}}
	}
	granted := func(dev string) *messages.CellEvent {
		return &messages.CellEvent{Kind: &messages.CellEvent_PermitGranted{PermitGranted: &messages.PermitGrantedToDevice{DeviceId: dev}}}
	}
	returned := func(dev string) *messages.CellEvent {
		return &messages.CellEvent{Kind: &messages.CellEvent_PermitReturned{PermitReturned: &messages.PermitReturned{DeviceId: dev}}}
	}
	s := Evolve(clone(base), queued("b", 7, "t2"))
	if got, want := dump(s), "cell \"c1\" used 1 holders 1 waiting 2\nhold a level=good cost=1\nwait 1 p level=poor cost=50\nwait 2 b level=poor cost=7 job=t2#2\n"; got != want {
		t.Errorf("waiting device queued again:\n%s\nwant\n%s", got, want)
	}
	s = Evolve(clone(base), queued("a", 9, "t2"))
	if got, want := dump(s), "cell \"c1\" used 1 holders 1 waiting 3\nhold a level=good cost=1\nwait 1 p level=poor cost=50\nwait 2 b level=good cost=1\nwait 3 a level=poor cost=9 job=t2#2\n"; got != want {
		t.Errorf("holder queued:\n%s\nwant\n%s", got, want)
	}
	g := Evolve(clone(s), granted("a"))
	if got, want := dump(g), "cell \"c1\" used 9 holders 1 waiting 2\nhold a level=poor cost=9 job=t2#2\nwait 1 p level=poor cost=50\nwait 2 b level=good cost=1\n"; got != want {
		t.Errorf("holder granted its new job:\n%s\nwant\n%s", got, want)
	}
	r := Evolve(clone(s), returned("a"))
	if got, want := dump(r), "cell \"c1\" used 0 holders 0 waiting 2\nwait 1 p level=poor cost=50\nwait 2 b level=good cost=1\n"; got != want {
		t.Errorf("holder waiting for a new job returned:\n%s\nwant\n%s", got, want)
	}
}

func TestResume(t *testing.T) {
	if got := Resume(State{}); got != nil {
		t.Errorf("Resume(zero) = %v", got)
	}
	if got := Resume(New("c1")); got != nil {
		t.Errorf("Resume(empty) = %v", got)
	}
	// A zero-cell state with holders (folded without New) yields nothing.
	s := State{Slots: map[string]Slot{"a": {Cost: 1}}, InUse: 1}
	if got := Resume(s); got != nil {
		t.Errorf("Resume(no cell) = %v", got)
	}
	s = build(t, "req b -90 10", "req a -110 10", "req p -120 10")
	var got []string
	for _, e := range Resume(s) {
		got = append(got, fmtEffect(e))
	}
	want := []string{"effect grant   a cell=c1", "effect grant   b cell=c1"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Resume = %q, want %q", got, want)
	}
	// A holder waiting for the units of a new job gets no grant: its device
	// waits for the new job's.
	next, _, err := Step(DefaultConfig(), s, reqJobIn(2, "c1", "b", "t2", 1, i32(-120), i32(10), false))
	if err != nil {
		t.Fatal(err)
	}
	got = got[:0]
	for _, e := range Resume(next) {
		got = append(got, fmtEffect(e))
	}
	want = want[:1]
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Resume with a holder waiting for a new job = %q, want %q", got, want)
	}
}

func TestAdmit(t *testing.T) {
	s := build(t, "req a -90 10", "req p -120 10")
	bad := DefaultConfig()
	bad.CostGood = 0
	if _, _, err := Admit(bad, s, 1); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Admit(bad config) = %v", err)
	}
	if _, _, err := Admit(DefaultConfig(), State{}, 1); !errors.Is(err, ErrNoCell) {
		t.Errorf("Admit(zero) = %v", err)
	}
	next, res, err := Admit(DefaultConfig(), s, 1)
	if err != nil || len(res.Events)+len(res.Effects) != 0 || next.Waiting() != 1 {
		t.Errorf("Admit with unchanged config: %v %s", err, fmtResult(res))
	}
	big := DefaultConfig()
	big.Budget = 51
	next, res, err = Admit(big, s, messages.UnixNano(t0.Add(9*time.Second)))
	if err != nil || fmtResult(res) != "event granted  p @+9s\neffect grant   p cell=c1\n" {
		t.Errorf("Admit with larger budget: %v %q", err, fmtResult(res))
	}
	if next.Used() != 51 || next.Check(big) != nil {
		t.Errorf("after Admit: %s", dump(next))
	}
}

func TestCheck(t *testing.T) {
	cfg := DefaultConfig()
	good := func() State { return build(t, "req a -90 10", "req p -120 10") }
	if err := good().Check(cfg); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*State){
		"empty holder id":   func(s *State) { s.Slots[""] = Slot{Cost: 1}; s.InUse++ },
		"holder cost 0":     func(s *State) { s.Slots["z"] = Slot{} },
		"used != sum":       func(s *State) { s.InUse = 7 },
		"over budget":       func(s *State) { s.Slots["z"] = Slot{Cost: 50}; s.InUse += 50 },
		"empty waiting id":  func(s *State) { s.Queue = append(s.Queue, Waiter{Cost: 1}) },
		"waiting cost 0":    func(s *State) { s.Queue = append(s.Queue, Waiter{DeviceID: "z"}) },
		"queued twice":      func(s *State) { s.Queue = append(s.Queue, s.Queue[0]) },
		"holding and queue": func(s *State) { s.Queue = append(s.Queue, Waiter{DeviceID: "a", Cost: 1}) },
		"holding and less": func(s *State) {
			s.Slots["a"] = Slot{Cost: 1}
			s.Queue = append(s.Queue, Waiter{DeviceID: "a", Cost: 1})
		},
	} {
		s := good()
		mut(&s)
		if err := s.Check(cfg); !errors.Is(err, ErrInvariant) {
			t.Errorf("%s: Check = %v, want ErrInvariant", name, err)
		}
	}
	// A holder waiting for a new job's higher cost is allowed.
	s := good()
	s.Queue = append(s.Queue, Waiter{DeviceID: "a", Cost: 5})
	if err := s.Check(cfg); err != nil {
		t.Errorf("holder waiting for more: %v", err)
	}
	// One holder above the budget (clamped at admission) is allowed.
	s = State{Cell: "c1", Slots: map[string]Slot{"p": {Cost: 80}}, InUse: 80}
	if err := s.Check(cfg); err != nil {
		t.Errorf("single oversized holder: %v", err)
	}
}

// TestImports keeps the package pure: only the standard library and messages.
func TestImports(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if p != "github.com/otafleet/otafleet/messages" && strings.Contains(strings.Split(p, "/")[0], ".") {
				t.Errorf("%s imports %s", f, p)
			}
			for _, banned := range []string{"time", "math/rand", "math/rand/v2", "os", "sync"} {
				if p == banned {
					t.Errorf("%s imports %s", f, p)
				}
			}
		}
	}
}
