package taskfsm

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/messages"
)

// recordStore is what a store holds of a task kept as records: each record
// as bytes, written only when a step changed it.
type recordStore struct {
	def        []byte
	header     []byte
	rows       map[int][]byte
	rowWrites  int
	hdrWrites  int
	lastHeader *messages.TaskHeader
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := deterministic.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// write stores what the step from prev to next with events changed, as a
// task actor does: the definition once, the header when it changed, the
// touched rows.
func (rs *recordStore) write(t testing.TB, prev, next State, events []*messages.TaskEvent) {
	t.Helper()
	if rs.rows == nil {
		rs.rows = map[int][]byte{}
	}
	if prev.task == nil && next.task != nil {
		rs.def = marshal(t, next.task)
	}
	if h := Header(next); h != nil && !proto.Equal(h, rs.lastHeader) {
		rs.header, rs.lastHeader = marshal(t, h), h
		rs.hdrWrites++
	}
	for _, pos := range Touched(prev, next, events) {
		rs.rows[pos] = marshal(t, Row(next, pos))
		rs.rowWrites++
	}
}

func (rs *recordStore) load(t testing.TB) (State, error) {
	t.Helper()
	def, h := &messages.TaskCreated{}, &messages.TaskHeader{}
	if err := proto.Unmarshal(rs.def, def); err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(rs.header, h); err != nil {
		t.Fatal(err)
	}
	var rows []*messages.TaskRow
	for pos, b := range rs.rows {
		r := &messages.TaskRow{}
		if err := proto.Unmarshal(b, r); err != nil {
			t.Fatal(err)
		}
		for len(rows) <= pos {
			rows = append(rows, nil)
		}
		rows[pos] = r
	}
	return FromRecords(def, h, rows)
}

// sameExact: equal definitions and every field equal, the numbers of the
// entries into WAITING included; only stale queue entries (and the heads
// that skip them) and the time zone cache may differ.
func sameExact(a, b State) bool {
	if !proto.Equal(a.task, b.task) {
		return false
	}
	ca, cb := canonQueues(a), canonQueues(b)
	ca.task, cb.task = nil, nil
	return sameState(ca, cb)
}

// TestRecordsFollowSteps walks random tasks (the walks of
// TestSnapshotRoundTrip: outcomes, wakes, retries of some and of all
// sub-tasks, stops) and after every step writes only the records the step
// changed (Touched rows, the header if it changed): FromRecords of what is
// stored equals the live state exactly, passes the invariants and resumes
// the same; every hundred steps a fork continues both with the same inputs.
func TestRecordsFollowSteps(t *testing.T) {
	var steps, rowWrites, hdrWrites, events int
	for seed := range uint64(6) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			const n = 80
			now := time.Date(2026, 3, 28, 0, 0, 0, 0, time.UTC).Add(time.Duration(seed) * 7 * time.Hour)
			cfg, create := walkCreate(seed, now, n)
			var rs recordStore
			s, res, err := Step(cfg, State{}, create)
			if err != nil {
				t.Fatal(err)
			}
			rs.write(t, State{}, s, res.Events)
			started := 0
			for _, e := range res.Events {
				if e.GetSubtaskStarted() != nil {
					started++
				}
			}
			if len(rs.rows) != started {
				t.Fatalf("creating the task (and starting %d sub-tasks) wrote %d rows; the sub-tasks as created need none", started, len(rs.rows))
			}
			w := newTaskWalker(seed, now, n)
			for i := range 1000 {
				in := w.next(s)
				next, res, err := Step(cfg, s, in)
				if err != nil {
					continue
				}
				rs.write(t, s, next, res.Events)
				s = next
				steps++
				events += len(res.Events)
				r, err := rs.load(t)
				if err != nil {
					t.Fatalf("seed %d step %d: FromRecords: %v", seed, i, err)
				}
				if !sameExact(s, r) {
					t.Fatalf("seed %d step %d (%v): the state from records differs\nlive:    %s\nrecords: %s", seed, i, in, fmtProgress(s), fmtProgress(r))
				}
				checkInvariants(t, r)
				if !sameResult(Result{Effects: Resume(s)}, Result{Effects: Resume(r)}) {
					t.Fatalf("seed %d step %d: Resume differs after FromRecords", seed, i)
				}
				if i%100 == 0 {
					continueBoth(t, fmt.Sprintf("seed %d step %d", seed, i), cfg, s, r, seed<<32|uint64(i), w.now, n, 60)
				}
			}
			rowWrites += rs.rowWrites
			hdrWrites += rs.hdrWrites
		})
	}
	t.Logf("%d steps (%d events) wrote %d rows and %d headers", steps, events, rowWrites, hdrWrites)
	if hdrWrites >= steps {
		t.Errorf("weak test: the header changed at every step")
	}
}

// TestTouchedIsSmall: an outcome touches one row, whatever the task's size.
func TestTouchedIsSmall(t *testing.T) {
	now := time.Date(2026, 3, 28, 0, 0, 0, 0, time.UTC)
	cfg, create := walkCreate(1, now, 2000)
	s, res, err := Step(cfg, State{}, create)
	if err != nil {
		t.Fatal(err)
	}
	if got := Touched(State{}, s, res.Events); len(got) != len(res.Events)-1 {
		t.Fatalf("creating a task of 2,000 and starting %d touched %d rows", len(res.Events)-1, len(got))
	}
	var id string
	for _, st := range s.Subtasks(0, 0) {
		if st.Status == messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING {
			id = st.DeviceID
			break
		}
	}
	if id == "" {
		t.Fatal("no sub-task started")
	}
	next, res, err := Step(cfg, s, &messages.TaskInput{AtUnixNano: now.Add(2 * time.Hour).UnixNano(), Kind: &messages.TaskInput_Outcome{Outcome: &messages.ReportOutcome{
		TaskId: "t", DeviceId: id, Attempt: 1, Status: messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS}}})
	if err != nil {
		t.Fatal(err)
	}
	touched := Touched(s, next, res.Events)
	pos, _, _ := next.Locate(id)
	if len(touched) == 0 || touched[0] != pos || len(touched) > len(res.Events) {
		t.Fatalf("an outcome of %s (position %d) with events %v touched %v", id, pos, res.Events, touched)
	}
}

// TestRecordsFromSnapshot: a state restored from an old whole-task
// snapshot, written as records (every row), comes back the same.
func TestRecordsFromSnapshot(t *testing.T) {
	now := time.Date(2026, 3, 28, 0, 0, 0, 0, time.UTC)
	cfg, create := walkCreate(2, now, 60)
	s, _, err := Step(cfg, State{}, create)
	if err != nil {
		t.Fatal(err)
	}
	w := newTaskWalker(2, now, 60)
	for range 300 {
		if next, _, err := Step(cfg, s, w.next(s)); err == nil {
			s = next
		}
	}
	old := restore(t, snapshotBytes(t, s))
	rs := recordStore{def: marshal(t, old.task), header: marshal(t, Header(old)), rows: map[int][]byte{}}
	for pos := range old.subs {
		rs.rows[pos] = marshal(t, Row(old, pos))
	}
	r, err := rs.load(t)
	if err != nil {
		t.Fatal(err)
	}
	if !sameExact(old, r) || !equalState(s, r) {
		t.Fatalf("state from the snapshot's records differs\nsnapshot: %s\nrecords:  %s", fmtProgress(old), fmtProgress(r))
	}
	continueBoth(t, "from snapshot", cfg, s, r, 99, w.now, 60, 100)
}

func TestFromRecordsRefuses(t *testing.T) {
	now := time.Date(2026, 3, 28, 0, 0, 0, 0, time.UTC)
	cfg, create := walkCreate(0, now, 4)
	s, _, err := Step(cfg, State{}, create)
	if err != nil {
		t.Fatal(err)
	}
	row := func(st messages.SubtaskStatus, attempt uint32, queued uint64) *messages.TaskRow {
		return &messages.TaskRow{Subtask: &messages.TaskSnapshot_Subtask{Status: st, Attempt: attempt, StatusChanges: 2}, Queued: queued}
	}
	waiting, processing := messages.SubtaskStatus_SUBTASK_STATUS_WAITING, messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING
	hdr := func(f func(*messages.TaskHeader)) *messages.TaskHeader {
		h := Header(s)
		f(h)
		return h
	}
	same := func(*messages.TaskHeader) {}
	at := func(pos int, r *messages.TaskRow) []*messages.TaskRow {
		rows := make([]*messages.TaskRow, pos+1)
		rows[pos] = r
		return rows
	}
	started := func(h *messages.TaskHeader) { h.Started = true }
	for _, c := range []struct {
		name string
		def  *messages.TaskCreated
		h    *messages.TaskHeader
		rows []*messages.TaskRow
		why  string
	}{
		{"no definition", nil, Header(s), nil, "without a definition"},
		{"no header", s.task, nil, nil, "without a definition or header"},
		{"count", s.task, hdr(func(h *messages.TaskHeader) { h.Subtasks = 3 }), nil, "3 sub-tasks for 5"},
		{"row past the end", s.task, hdr(same), at(5, row(waiting, 0, 9)), "row 5"},
		{"same number", s.task, hdr(same), at(3, row(waiting, 0, 1)), "same number 1"},
		{"no number", s.task, hdr(same), at(2, row(waiting, 0, 0)), "has no number"},
		{"started unset", s.task, hdr(same), at(1, row(processing, 1, 2)), "started is not set"},
		{"started set", s.task, hdr(started), nil, "no sub-task has an attempt"},
		{"unknown status", s.task, hdr(same), at(1, row(99, 1, 2)), "status"},
		{"bad definition", &messages.TaskCreated{}, hdr(same), nil, "task_id"},
	} {
		_, err := FromRecords(c.def, c.h, c.rows)
		if !errors.Is(err, ErrInvalidSnapshot) || !containsStr(err.Error(), c.why) {
			t.Errorf("%s: FromRecords = %v, want ErrInvalidSnapshot naming %q", c.name, err, c.why)
		}
	}
	if r, err := FromRecords(s.task, Header(s), nil); err != nil || !sameExact(s, r) {
		t.Fatalf("FromRecords of a new task = %v; want the created state", err)
	}
}

func containsStr(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
