package devicefsm

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/messages"
)

var deterministic = proto.MarshalOptions{Deterministic: true}

// snapshotBytes is what the engine stores: the deterministic encoding.
func snapshotBytes(t testing.TB, s State) []byte {
	t.Helper()
	b, err := deterministic.Marshal(Snapshot(s))
	if err != nil {
		t.Fatalf("marshal snapshot: %v", err)
	}
	return b
}

// restore decodes stored snapshot bytes as recovery does.
func restore(t testing.TB, b []byte) State {
	t.Helper()
	p := &messages.DeviceSnapshot{}
	if err := proto.Unmarshal(b, p); err != nil {
		t.Fatalf("unmarshal snapshot: %v", err)
	}
	s, err := FromSnapshot(p)
	if err != nil {
		t.Fatalf("FromSnapshot: %v\nstate:\n%s", err, dumpState(s))
	}
	return s
}

// diffState compares two states field by field, messages with proto.Equal
// and times with Equal, and returns the path of the first difference ("" if
// none). It walks State by reflection, so a field added to State and left
// out of the snapshot shows up here as soon as a walk sets it.
func diffState(a, b State) string {
	return diffValue("State", reflect.ValueOf(a), reflect.ValueOf(b))
}

var (
	protoMessageType = reflect.TypeFor[proto.Message]()
	timeType         = reflect.TypeFor[time.Time]()
)

func diffValue(path string, a, b reflect.Value) string {
	switch {
	case a.Type().Implements(protoMessageType):
		if !proto.Equal(a.Interface().(proto.Message), b.Interface().(proto.Message)) {
			return path
		}
		return ""
	case a.Type() == timeType:
		if !a.Interface().(time.Time).Equal(b.Interface().(time.Time)) {
			return path
		}
		return ""
	}
	switch a.Kind() {
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				return path
			}
			return ""
		}
		return diffValue(path, a.Elem(), b.Elem())
	case reflect.Struct:
		for i := range a.NumField() {
			if d := diffValue(path+"."+a.Type().Field(i).Name, a.Field(i), b.Field(i)); d != "" {
				return d
			}
		}
		return ""
	case reflect.Slice:
		if a.Len() != b.Len() {
			return path + ".len"
		}
		for i := range a.Len() {
			if d := diffValue(fmt.Sprintf("%s[%d]", path, i), a.Index(i), b.Index(i)); d != "" {
				return d
			}
		}
		return ""
	}
	if !reflect.DeepEqual(a.Interface(), b.Interface()) {
		return path
	}
	return ""
}

func sameEffects(a, b []*messages.DeviceEffect) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func sameEvents(a, b []*messages.DeviceEvent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// checkSnapshot checks one state: the stored bytes restore an equal state,
// which encodes to the same bytes and resumes with the same effects.
func checkRoundTrip(t *testing.T, name string, s State) State {
	t.Helper()
	b := snapshotBytes(t, s)
	r := restore(t, b)
	if d := diffState(s, r); d != "" {
		t.Fatalf("%s: restored state differs at %s\noriginal:\n%s\nrestored:\n%s", name, d, dumpState(s), dumpState(r))
	}
	if dumpState(s) != dumpState(r) {
		t.Fatalf("%s: restored dump differs\noriginal:\n%s\nrestored:\n%s", name, dumpState(s), dumpState(r))
	}
	if b2 := snapshotBytes(t, r); !bytes.Equal(b, b2) {
		t.Fatalf("%s: the restored state encodes differently", name)
	}
	if !sameEffects(Resume(s), Resume(r)) {
		t.Fatalf("%s: Resume differs after restore", name)
	}
	return r
}

// walker produces the random inputs of TestRandomWalk from its own generator,
// so two walkers with one seed feed two equal states the same inputs.
type walker struct {
	rng   *rand.Rand
	kinds []string
	now   time.Time
}

func newWalker(seed uint64, now time.Time) *walker {
	return &walker{rng: rand.New(rand.NewPCG(seed, seed*7919)), kinds: inputKinds(), now: now}
}

func (w *walker) next(s State) *messages.DeviceInput {
	w.now = w.now.Add(time.Duration(w.rng.IntN(300)) * time.Second)
	in := randomInput(w.rng, w.kinds[w.rng.IntN(len(w.kinds))], s)
	in.AtUnixNano = messages.UnixNano(w.now)
	return in
}

// continueBoth steps the original and the restored state with the same
// inputs and requires identical results and states all along.
func continueBoth(t *testing.T, name string, orig, restored State, seed uint64, now time.Time, steps int) {
	t.Helper()
	a, b := cloneState(orig), restored
	wa, wb := newWalker(seed, now), newWalker(seed, now)
	for i := range steps {
		ina, inb := wa.next(a), wb.next(b)
		na, ra, erra := Step(DefaultConfig(), a, ina)
		nb, rb, errb := Step(DefaultConfig(), b, inb)
		if (erra == nil) != (errb == nil) || !sameEvents(ra.Events, rb.Events) || !sameEffects(ra.Effects, rb.Effects) {
			t.Fatalf("%s: step %d after restore differs on %v\noriginal: %v\n%s\nrestored: %v\n%s",
				name, i, ina, erra, fmtResult(ra), errb, fmtResult(rb))
		}
		a, b = na, nb
		if d := diffState(a, b); d != "" {
			t.Fatalf("%s: step %d after restore: states differ at %s", name, i, d)
		}
	}
}

// TestSnapshotRoundTrip snapshots every third state of long random walks (and
// every hand-built matrix state): the restored state equals the original, encodes
// to the same bytes, resumes the same, and every 150 steps a fork
// continues both with the same inputs and sees exactly the same events and
// effects.
func TestSnapshotRoundTrip(t *testing.T) {
	for _, cls := range stateClasses() {
		r := checkRoundTrip(t, cls.name, cls.s)
		continueBoth(t, cls.name, cls.s, r, 99, epoch, 50)
	}
	kinds := inputKinds()
	for seed := uint64(1); seed <= 6; seed++ {
		rng := rand.New(rand.NewPCG(seed, seed*104729))
		h := newHarness(t)
		for i := range 2000 {
			h.now = h.now.Add(time.Duration(rng.IntN(300)) * time.Second)
			in := randomInput(rng, kinds[rng.IntN(len(kinds))], h.s)
			in.AtUnixNano = messages.UnixNano(h.now)
			next, _, err := Step(h.cfg, h.s, in)
			if err != nil {
				continue
			}
			h.s = next
			if i%3 != 0 {
				continue
			}
			name := fmt.Sprintf("seed %d step %d", seed, i)
			r := checkRoundTrip(t, name, h.s)
			if i%150 == 0 {
				continueBoth(t, name, h.s, r, seed<<32|uint64(i), h.now, 60)
			}
		}
	}
}

// TestSnapshotDeterministic: equal states encode to equal bytes, whether
// built live, replayed from the journal or restored from a snapshot.
func TestSnapshotDeterministic(t *testing.T) {
	kinds := inputKinds()
	rng := rand.New(rand.NewPCG(7, 7))
	h := newHarness(t)
	for i := range 3000 {
		h.now = h.now.Add(time.Duration(rng.IntN(300)) * time.Second)
		in := randomInput(rng, kinds[rng.IntN(len(kinds))], h.s)
		in.AtUnixNano = messages.UnixNano(h.now)
		next, res, err := Step(h.cfg, h.s, in)
		if err != nil {
			continue
		}
		h.s = next
		h.journal = append(h.journal, res.Events...)
		if i%50 != 0 {
			continue
		}
		live := snapshotBytes(t, h.s)
		if again := snapshotBytes(t, h.s); !bytes.Equal(live, again) {
			t.Fatalf("step %d: two encodings of one state differ", i)
		}
		if replayed := snapshotBytes(t, h.replay()); !bytes.Equal(live, replayed) {
			t.Fatalf("step %d: live and replayed states encode differently", i)
		}
	}
}

// validSnapshot is a snapshot with every part set: a FOTA job waiting in the
// outbox for a sleeping device, after an earlier job.
func validSnapshot() *messages.DeviceSnapshot {
	var s State
	for _, cls := range stateClasses() {
		if cls.name == "lwm2m_fota/DOWNLOADED" {
			s = cloneState(cls.s)
		}
	}
	if s.Job == nil {
		panic("stateClasses has no lwm2m_fota/DOWNLOADED")
	}
	s.HasFw, s.FwVersion, s.HasSw = true, "1.0", true
	s.Outbox = []*messages.Downlink{read(messages.PathCellID)}
	s.Last = &Last{Protocol: protoMQTT, PermitCell: "c0", Outcome: &messages.ReportOutcome{
		TaskId: "task-0", DeviceId: "dev-1", Attempt: 2, Status: statusFail, Reason: messages.Reason_REASON_DEVICE_BUSY}}
	return proto.Clone(Snapshot(s)).(*messages.DeviceSnapshot)
}

// TestFromSnapshotInvalid: each broken snapshot is refused with a clear
// ErrInvalidSnapshot naming the problem.
func TestFromSnapshotInvalid(t *testing.T) {
	if _, err := FromSnapshot(validSnapshot()); err != nil {
		t.Fatalf("valid snapshot refused: %v", err)
	}
	idle := func(mut func(p *messages.DeviceSnapshot)) func(p *messages.DeviceSnapshot) {
		return func(p *messages.DeviceSnapshot) {
			p.Job, p.Stage, p.DeadlineUnixNano, p.NotifiedAtUnixNano, p.UriAcked = nil, stIdle, 0, 0, false
			p.PermitCell, p.PermitHeld, p.PermitCellOnly = "", false, false
			mut(p)
		}
	}
	cases := []struct {
		name string
		mut  func(p *messages.DeviceSnapshot)
		want string
	}{
		{"no device", func(p *messages.DeviceSnapshot) { p.DeviceId = "" }, "device_id is empty"},
		{"stage", func(p *messages.DeviceSnapshot) { p.Stage = 99 }, "stage 99 is unknown"},
		{"cause", func(p *messages.DeviceSnapshot) { p.VerifyCause = 9 }, "verify_cause 9 is unknown"},
		{"job task", func(p *messages.DeviceSnapshot) { p.Job.TaskId = "" }, "job.task_id is empty"},
		{"job protocol", func(p *messages.DeviceSnapshot) { p.Job.Protocol = 42 }, "job: protocol 42 is not a device flow"},
		{"job attempt", func(p *messages.DeviceSnapshot) { p.Job.Attempt = 0 }, "job.attempt"},
		{"idle stage", idle(func(p *messages.DeviceSnapshot) { p.Stage = stVersion }), "idle device"},
		{"idle deadline", idle(func(p *messages.DeviceSnapshot) { p.DeadlineUnixNano = 5 }), "idle device"},
		{"idle permit", idle(func(p *messages.DeviceSnapshot) { p.PermitCell = "c1" }), "idle device"},
		{"idle progress", idle(func(p *messages.DeviceSnapshot) { p.Progress = 3 }), "idle device"},
		{"held without cell", func(p *messages.DeviceSnapshot) { p.PermitCell = "" }, "without permit_cell"},
		{"idle execute due", idle(func(p *messages.DeviceSnapshot) { p.PcpExecuteDue = true }), "idle device"},
		{"execute due for FOTA", func(p *messages.DeviceSnapshot) { p.PcpExecuteDue = true }, "pcp_execute_due outside"},
		{"empty downlink", func(p *messages.DeviceSnapshot) { p.Outbox = append(p.Outbox, nil) }, "outbox[1] has no kind"},
		{"downlink no kind", func(p *messages.DeviceSnapshot) { p.Outbox[0] = &messages.Downlink{DeviceId: "dev-1"} }, "outbox[0] has no kind"},
		{"last no outcome", func(p *messages.DeviceSnapshot) { p.Last.Outcome = nil }, "last.outcome is missing"},
		{"last other device", func(p *messages.DeviceSnapshot) { p.Last.Outcome.DeviceId = "dev-2" }, "is not device"},
		{"last status", func(p *messages.DeviceSnapshot) { p.Last.Outcome.Status = 77 }, "last.outcome.status 77"},
		{"last reason", func(p *messages.DeviceSnapshot) { p.Last.Outcome.Reason = 999 }, "last.outcome.reason 999"},
		{"last protocol", func(p *messages.DeviceSnapshot) { p.Last.Protocol = 8 }, "last.protocol 8"},
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
		if errors.Is(err, ErrInvalidInput) {
			t.Errorf("%s: %v also wraps ErrInvalidInput", c.name, err)
		}
	}
}

// FuzzFromSnapshot decodes arbitrary bytes as a snapshot: FromSnapshot
// never panics, refuses with ErrInvalidSnapshot, and what it accepts
// round-trips and can be stepped and resumed.
func FuzzFromSnapshot(f *testing.F) {
	for _, cls := range stateClasses() {
		f.Add(snapshotBytes(f, cls.s))
	}
	b, err := deterministic.Marshal(validSnapshot())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	kinds := inputKinds()
	f.Fuzz(func(t *testing.T, b []byte) {
		p := &messages.DeviceSnapshot{}
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
		r := restore(t, snapshotBytes(t, s))
		if d := diffState(s, r); d != "" {
			t.Fatalf("second round trip differs at %s", d)
		}
		_ = Resume(s)
		for _, kind := range kinds {
			if _, _, err := Step(DefaultConfig(), cloneState(s), sample(kind, s)); err != nil && !errors.Is(err, ErrInvalidInput) {
				t.Fatalf("%s: %v", kind, err)
			}
		}
	})
}
