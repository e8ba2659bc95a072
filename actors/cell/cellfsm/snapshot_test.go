package cellfsm

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

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
	p := &messages.CellSnapshot{}
	if err := proto.Unmarshal(b, p); err != nil {
		t.Fatalf("unmarshal snapshot: %v", err)
	}
	s, err := FromSnapshot(p)
	if err != nil {
		t.Fatalf("FromSnapshot: %v", err)
	}
	return s
}

// equalState is sameState plus reflect.DeepEqual over all fields (nil and
// empty containers alike), so a field added to State and left out of the
// snapshot fails here.
func equalState(a, b State) bool {
	norm := func(s State) State {
		if s.Slots == nil {
			s.Slots = map[string]Slot{}
		}
		if len(s.Queue) == 0 {
			s.Queue = nil
		}
		return s
	}
	return sameState(a, b) && reflect.DeepEqual(norm(a), norm(b))
}

func checkRoundTrip(t *testing.T, name string, s State) State {
	t.Helper()
	b := snapshotBytes(t, s)
	r := restore(t, b)
	if !equalState(s, r) {
		t.Fatalf("%s: restored state differs\noriginal:\n%s\nrestored:\n%s", name, dump(s), dump(r))
	}
	if b2 := snapshotBytes(t, r); !bytes.Equal(b, b2) {
		t.Fatalf("%s: the restored state encodes differently", name)
	}
	if !slices.EqualFunc(Resume(s), Resume(r), func(x, y *messages.CellEffect) bool { return proto.Equal(x, y) }) {
		t.Fatalf("%s: Resume differs after restore", name)
	}
	return r
}

// cellWalker makes random requests (mixed coverage) and releases over a
// fixed set of devices, like TestPropertyRandom, from its own generator.
type cellWalker struct {
	r    *rand.Rand
	devs []string
	jobs map[string]uint32 // each device's current job (attempt of task "t")
	at   int64
}

func newCellWalker(seed uint64, at int64) *cellWalker {
	w := &cellWalker{r: rand.New(rand.NewPCG(seed, 0xce11)), jobs: map[string]uint32{}, at: at}
	for i := range 60 {
		w.devs = append(w.devs, fmt.Sprintf("d%02d", i))
	}
	return w
}

func (w *cellWalker) next(s State) *messages.CellInput {
	w.at++
	if len(s.Slots) > 0 && w.r.IntN(100) < 35 {
		ids := slices.Sorted(maps.Keys(s.Slots))
		return relIn(w.at, "c1", ids[w.r.IntN(len(ids))])
	}
	dev := w.devs[w.r.IntN(len(w.devs))]
	if w.r.IntN(100) < 10 {
		return relIn(w.at, "c1", dev)
	}
	if w.r.IntN(100) < 15 {
		w.jobs[dev]++ // the device's next job
	}
	rsrp, sinr, cellOnly := randomRadio(w.r)
	return reqJobIn(w.at, "c1", dev, "t", w.jobs[dev], rsrp, sinr, cellOnly)
}

// continueBoth steps the original and the restored state with the same
// inputs (after an Admit, as recovery does) and requires identical results.
func continueBoth(t *testing.T, name string, cfg Config, orig, restored State, seed uint64, at int64, steps int) {
	t.Helper()
	a, b := clone(orig), restored
	var ra, rb Result
	var erra, errb error
	a, ra, erra = Admit(cfg, a, at)
	b, rb, errb = Admit(cfg, b, at)
	if erra != nil || errb != nil || fmtResult(ra) != fmtResult(rb) {
		t.Fatalf("%s: Admit after restore differs: %v %v\n%s\n%s", name, erra, errb, fmtResult(ra), fmtResult(rb))
	}
	wa, wb := newCellWalker(seed, at), newCellWalker(seed, at)
	for i := range steps {
		ina, inb := wa.next(a), wb.next(b)
		a, ra, erra = Step(cfg, a, ina)
		b, rb, errb = Step(cfg, b, inb)
		if erra != nil || errb != nil || fmtResult(ra) != fmtResult(rb) {
			t.Fatalf("%s: step %d after restore differs on %v: %v %v\noriginal:\n%s\nrestored:\n%s",
				name, i, ina, erra, errb, fmtResult(ra), fmtResult(rb))
		}
		if !equalState(a, b) {
			t.Fatalf("%s: step %d after restore: states differ\n%s\n%s", name, i, dump(a), dump(b))
		}
	}
}

// TestSnapshotRoundTrip snapshots every state of random walks under two
// budgets: the restored state equals the original, encodes to the same bytes
// and resumes the same; every hundred steps a fork continues both with the
// same inputs and sees exactly the same events and effects.
func TestSnapshotRoundTrip(t *testing.T) {
	small := DefaultConfig()
	small.Budget, small.CostMedium, small.CostPoor, small.CostCellOnly = 12, 4, 12, 3
	for _, tc := range []struct {
		name string
		cfg  Config
	}{{"default", DefaultConfig()}, {"small", small}} {
		for seed := uint64(1); seed <= 3; seed++ {
			name := fmt.Sprintf("%s/%d", tc.name, seed)
			s := New("c1")
			checkRoundTrip(t, name+" empty", s)
			w := newCellWalker(seed, 0)
			for i := range 1500 {
				next, _, err := Step(tc.cfg, s, w.next(s))
				if err != nil {
					t.Fatalf("%s step %d: %v", name, i, err)
				}
				s = next
				r := checkRoundTrip(t, fmt.Sprintf("%s step %d", name, i), s)
				if i%100 == 0 {
					continueBoth(t, fmt.Sprintf("%s step %d", name, i), tc.cfg, s, r, seed<<32|uint64(i), w.at, 100)
				}
			}
		}
	}
}

// TestSnapshotDeterministic: equal states encode to equal bytes, whatever
// the map's iteration order and however the state was built (live or by
// replay).
func TestSnapshotDeterministic(t *testing.T) {
	cfg := DefaultConfig()
	s, shadow := New("c1"), New("c1")
	w := newCellWalker(5, 0)
	for i := range 1000 {
		next, res, err := Step(cfg, s, w.next(s))
		if err != nil {
			t.Fatal(err)
		}
		s = next
		for _, e := range res.Events {
			shadow = Evolve(shadow, e)
		}
		if i%25 != 0 {
			continue
		}
		b := snapshotBytes(t, s)
		for range 5 {
			if !bytes.Equal(b, snapshotBytes(t, clone(s))) {
				t.Fatalf("step %d: two encodings of one state differ", i)
			}
		}
		if !bytes.Equal(b, snapshotBytes(t, shadow)) {
			t.Fatalf("step %d: live and replayed states encode differently", i)
		}
	}
}

func validSnapshot() *messages.CellSnapshot {
	good, medium := messages.CoverageLevel_COVERAGE_LEVEL_GOOD, messages.CoverageLevel_COVERAGE_LEVEL_MEDIUM
	return &messages.CellSnapshot{
		CellId: "c1",
		Holders: []*messages.CellSnapshot_Member{
			{DeviceId: "a", Level: good, Cost: 1},
			{DeviceId: "b", Level: medium, Cost: 5},
		},
		Queue: []*messages.CellSnapshot_Member{
			{DeviceId: "z", Level: messages.CoverageLevel_COVERAGE_LEVEL_POOR, Cost: 50},
			{DeviceId: "c", Level: good, Cost: 1},
		},
		InUse: 6,
	}
}

// TestFromSnapshotInvalid: each broken snapshot is refused with a clear
// ErrInvalidSnapshot naming the problem.
func TestFromSnapshotInvalid(t *testing.T) {
	s, err := FromSnapshot(validSnapshot())
	if err != nil {
		t.Fatalf("valid snapshot refused: %v", err)
	}
	if err := s.Check(DefaultConfig()); err != nil {
		t.Fatalf("restored state: %v", err)
	}
	// A holder waiting for a new job's higher cost is in both lists.
	p := validSnapshot()
	p.Queue[1].DeviceId, p.Queue[1].Cost, p.Queue[1].TaskId, p.Queue[1].Attempt = "b", 50, "t2", 1
	if s, err := FromSnapshot(p); err != nil || s.Check(DefaultConfig()) != nil || s.Queue[1].Job != (Job{TaskID: "t2", Attempt: 1}) {
		t.Fatalf("holder waiting for more refused: %v\n%s", err, dump(s))
	}
	cases := []struct {
		name string
		mut  func(p *messages.CellSnapshot)
		want string
	}{
		{"no cell", func(p *messages.CellSnapshot) { p.CellId = "" }, "cell_id is empty"},
		{"holder no id", func(p *messages.CellSnapshot) { p.Holders[0].DeviceId = "" }, "holders[0]: device_id is empty"},
		{"holder nil", func(p *messages.CellSnapshot) { p.Holders[1] = nil }, "holders[1]: device_id is empty"},
		{"holder cost 0", func(p *messages.CellSnapshot) { p.Holders[1].Cost = 0 }, `holders[1]: device "b" has cost 0`},
		{"holder level", func(p *messages.CellSnapshot) { p.Holders[0].Level = 17 }, "unknown level 17"},
		{"holder twice", func(p *messages.CellSnapshot) { p.Holders[1].DeviceId = "a" }, `device "a" holds twice`},
		{"holders unsorted", func(p *messages.CellSnapshot) { p.Holders[0].DeviceId = "x" }, "out of order"},
		{"in use", func(p *messages.CellSnapshot) { p.InUse = 7 }, "in_use 7 is not the sum of the holders' costs 6"},
		{"queue no id", func(p *messages.CellSnapshot) { p.Queue[1].DeviceId = "" }, "queue[1]: device_id is empty"},
		{"queue cost 0", func(p *messages.CellSnapshot) { p.Queue[0].Cost = 0 }, `queue[0]: device "z" has cost 0`},
		{"queue level", func(p *messages.CellSnapshot) { p.Queue[0].Level = -1 }, "unknown level -1"},
		{"queue twice", func(p *messages.CellSnapshot) { p.Queue[1].DeviceId = "z" }, `device "z" waits twice`},
		{"holds and waits", func(p *messages.CellSnapshot) { p.Queue[1].DeviceId = "b" }, `queue[1]: device "b" holds 5 units and waits for 1`},
	}
	if _, err := FromSnapshot(nil); !errors.Is(err, ErrInvalidSnapshot) || !strings.Contains(err.Error(), "nil") {
		t.Errorf("nil snapshot: %v", err)
	}
	for _, c := range cases {
		p := validSnapshot()
		c.mut(p)
		_, err := FromSnapshot(p)
		if !errors.Is(err, ErrInvalidSnapshot) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want ErrInvalidSnapshot mentioning %q", c.name, err, c.want)
		}
	}
}

// FuzzFromSnapshot decodes arbitrary bytes as a snapshot: FromSnapshot never
// panics, refuses with ErrInvalidSnapshot, and what it accepts passes the
// config-free invariants, round-trips, and can be admitted, stepped and resumed.
func FuzzFromSnapshot(f *testing.F) {
	b, err := deterministic.Marshal(validSnapshot())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	s := New("c1")
	w := newCellWalker(1, 0)
	for i := range 200 {
		s, _, _ = Step(DefaultConfig(), s, w.next(s))
		if i%20 == 0 {
			f.Add(snapshotBytes(f, s))
		}
	}
	big := Config{
		RSRPMax: -44, RSRPGoodMin: -105, RSRPMediumMin: -115, RSRPPoorMin: -125,
		SINRMax: 30, SINRGoodMin: 7, SINRMediumMin: -3, SINRPoorMin: -8,
		Budget: ^uint32(0), CostGood: 1, CostMedium: 1, CostPoor: 1, CostCellOnly: 1,
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p := &messages.CellSnapshot{}
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
		if err := s.Check(big); err != nil {
			t.Fatalf("accepted state breaks an invariant: %v", err)
		}
		if r := restore(t, snapshotBytes(t, s)); !equalState(s, r) {
			t.Fatalf("second round trip differs")
		}
		_ = Resume(s)
		s, _, err = Admit(DefaultConfig(), s, 1)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := Step(DefaultConfig(), s, relIn(2, s.Cell, "d00")); err != nil {
			t.Fatal(err)
		}
	})
}
