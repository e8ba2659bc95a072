package actors_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/transport"
)

var errCrashed = errors.New("crashed: the process is gone")

// crashingStore wraps a store of a journal the test crashes (see
// journal). Right after its crashAt-th acknowledged append it crashes the
// journal (a machine's crash keeps only synced data, plus a random share of
// the rest; a process's keeps what the store accepted) and from then on
// acknowledges nothing: the process is dead, no effect of a later write can
// happen. It records every durable event to check the image: those of a
// synced append, and those of an unsynced (NoSync) append that returned
// before a synced append began.
type crashingStore struct {
	persistence.EventStore
	j       journal
	crashAt int
	rng     *rand.Rand

	mu      sync.Mutex
	acked   []persistence.Event // durable; Seq set; Type carries no meaning here
	keys    []persistence.Stream
	pending []persistence.Event // written unsynced, not yet known durable
	pkeys   []persistence.Stream
	pbase   int // unsynced events written before pending[0]
	n       int
	dead    bool
}

func (c *crashingStore) Append(ctx context.Context, a persistence.Append) (uint64, error) {
	c.mu.Lock()
	dead := c.dead
	before := c.pbase + len(c.pending) // unsynced events a synced append makes durable
	c.mu.Unlock()
	if dead {
		return 0, errCrashed
	}
	seq, err := c.EventStore.Append(ctx, a)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil || c.dead {
		return 0, errors.Join(err, errCrashed)
	}
	c.n++
	if k := before - c.pbase; !a.NoSync && k > 0 {
		c.acked = append(c.acked, c.pending[:k]...)
		c.keys = append(c.keys, c.pkeys[:k]...)
		c.pending = slices.Delete(c.pending, 0, k)
		c.pkeys = slices.Delete(c.pkeys, 0, k)
		c.pbase += k
	}
	for i, e := range a.Events {
		e.Seq = seq - uint64(len(a.Events)) + uint64(i) + 1
		if a.NoSync {
			c.pending = append(c.pending, e)
			c.pkeys = append(c.pkeys, a.Stream)
		} else {
			c.acked = append(c.acked, e)
			c.keys = append(c.keys, a.Stream)
		}
	}
	if c.n == c.crashAt {
		c.j.crash(c.rng)
		c.dead = true
	}
	return seq, nil
}

// SaveSnapshot fails once the process is dead (a store that outlives the
// process, PostgreSQL's, must not take the dead engine's snapshots).
func (c *crashingStore) SaveSnapshot(ctx context.Context, s persistence.Stream, snap persistence.Snapshot) error {
	c.mu.Lock()
	dead := c.dead
	c.mu.Unlock()
	if dead {
		return errCrashed
	}
	return c.EventStore.SaveSnapshot(ctx, s, snap)
}

func (c *crashingStore) crashed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead
}

// crashCampaign is a small mixed campaign: 2 devices per protocol in 2 cells.
type crashCampaign struct {
	specs []memtransport.DeviceSpec
	tasks map[string]*messages.CreateTask
	// after names, for a task created only once another succeeded, that
	// other task (as a client would create it after watching the first).
	after map[string]string
	// transport configures the simulated devices.
	transport memtransport.Config
	// reboot: the simulated devices die with the server and come back from
	// their state file (memtransport.Config.StateFile), keeping only their
	// durable facts, as the --simulate devices of a killed `otafleet serve`
	// do (cmd/otafleet's TestProcessKillNine).
	reboot bool
}

func newCrashCampaign() crashCampaign {
	c := crashCampaign{tasks: map[string]*messages.CreateTask{}}
	for _, p := range []messages.Protocol{messages.Protocol_PROTOCOL_MQTT, messages.Protocol_PROTOCOL_LWM2M_FOTA, messages.Protocol_PROTOCOL_LWM2M_PCP} {
		specs := fleet(2, 2, p)
		var devs []string
		for i := range specs {
			specs[i].ID = fmt.Sprintf("%s-%d", p, i)
			devs = append(devs, specs[i].ID)
		}
		c.specs = append(c.specs, specs...)
		id := "task-" + p.String()
		c.tasks[id] = createTask(id, p, devs, &messages.Policy{RetryCount: 3, RetryIntervalMinutes: 1})
	}
	return c
}

// run runs the campaign on store until done() or the store crashed; it
// returns the rig. Tasks whose creation was not acknowledged are created again
// (as a client would after an error).
func (c crashCampaign) run(t *testing.T, clk *clocktest.Clock, store persistence.EventStore, tr *memtransport.Transport, up *transport.LateUplinks, stop func() bool) *rig {
	t.Helper()
	r := newRig(t, clk, store, tr, up)
	ctx := context.Background()
	if err := tr.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	create := func() {
		for id, ct := range c.tasks {
			if first, ok := c.after[id]; ok && !c.succeeded(r, first) {
				continue
			}
			if _, err := r.e.Task(ctx, id); errors.Is(err, actors.ErrNotFound) {
				_ = r.e.CreateTask(ctx, ct) // may fail with the crash
			}
		}
		r.e.Settle()
	}
	create()
	// A crashing run ends at its crash or, if it makes fewer writes than
	// the run that counted them, when the campaign is done: a cell journals
	// the inputs its mailbox holds in one append, and how many it holds
	// depends on scheduling (issue 21). The restart is then checked as
	// after a crash past the last write.
	if done := c.done(r); stop == nil {
		stop = done
	} else {
		crashed := stop
		stop = func() bool { return crashed() || done() }
	}
	end := clk.Now().Add(72 * time.Hour)
	for !stop() {
		next, ok := clk.NextDeadline()
		if !ok || next.After(end) {
			t.Fatalf("campaign stalled at %v", clk.Now())
		}
		clk.AdvanceTo(next)
		r.e.Settle()
		if len(c.after) > 0 {
			create()
		}
	}
	return r
}

func (c crashCampaign) succeeded(r *rig, id string) bool {
	v, err := r.e.Task(context.Background(), id)
	return err == nil && v.Status == messages.TaskStatus_TASK_STATUS_SUCCESS
}

// upgrades returns how many tasks target device id: the upgrades it makes.
func (c crashCampaign) upgrades(id string) int {
	var n int
	for _, ct := range c.tasks {
		if slices.Contains(ct.GetDeviceIds(), id) {
			n++
		}
	}
	return n
}

func (c crashCampaign) done(r *rig) func() bool {
	return func() bool {
		for id := range c.tasks {
			if !c.succeeded(r, id) {
				return false
			}
		}
		return true
	}
}

// TestCrashAtEveryJournalWrite runs a scripted campaign and crashes it at
// every journal write in turn: on Pebble's crashable in-memory filesystem
// as the machine crashes, and on PostgreSQL (at every seventh write) as the
// process does. After each crash the store is reopened from what the crash
// left: every acknowledged event is there, byte for byte; a new engine
// recovers, the same devices reconnect, and the campaign completes with
// every device upgraded exactly once (no second install, no second Execute
// or PCP 0x17).
func TestCrashAtEveryJournalWrite(t *testing.T) {
	forEachStore(t, func(t *testing.T, s engineStore) { crashAtEveryWrite(t, s, newCrashCampaign()) }, "pebble", "postgres")
}

// TestCrashAtEveryJournalWriteBetweenTasks (issue 21): two FOTA tasks on
// the same devices, the second created once the first succeeded, crashed
// at every journal write. A device's outcome is journaled unsynced and made
// durable by its task's synced SubtaskFinished: a crash never loses the end
// of a job its task counted, so the second task never finds a device busy
// with the first (no Task Conflict, no second attempt), every device
// upgrades exactly twice, and nothing acknowledged is lost. Pebble only:
// the rule it checks is about what a machine's crash loses.
func TestCrashAtEveryJournalWriteBetweenTasks(t *testing.T) {
	specs := fleet(2, 1, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	policy := &messages.Policy{RetryCount: 3, RetryIntervalMinutes: 1}
	second := createTask("task-b", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), policy)
	second.Package.Version = "3.0"
	campaign := crashCampaign{
		specs: specs,
		tasks: map[string]*messages.CreateTask{
			"task-a": createTask("task-a", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), policy),
			"task-b": second,
		},
		after: map[string]string{"task-b": "task-a"},
	}
	crashAtEveryWrite(t, storeNamed("pebble"), campaign)
}

// TestCrashAtEveryJournalWriteUpdateResultAckedEarly (issue 21): the
// campaign's FOTA devices get their Update Result 1 notifications
// acknowledged before their step is durable (marked no_ack, as
// messages.DeviceInput.FoundAgainOnResume allows a transport to), and the
// campaign is crashed at every journal write (on PostgreSQL at every
// seventh, and with PostgreSQL itself crashed, which loses unsynced commits
// as a machine's crash does, at every eighteenth): the device machine
// finds the result again after each crash, and every device still
// upgrades exactly once, with at most one Execute.
func TestCrashAtEveryJournalWriteUpdateResultAckedEarly(t *testing.T) {
	forEachStore(t, func(t *testing.T, s engineStore) {
		campaign := newCrashCampaign()
		campaign.transport.AckEarly = (*messages.DeviceInput).FoundAgainOnResume
		crashAtEveryWrite(t, s, campaign)
	}, "pebble", "postgres", "postgres-crash")
}

// crashAtEveryWrite runs campaign once on store s to count its journal
// writes, then once per write (every s.crashStep-th; with -short about 15
// in all), crashed right after that write.
func crashAtEveryWrite(t *testing.T, s engineStore, campaign crashCampaign) {
	newJournal := s.journals(t)
	total := countWrites(t, newJournal, campaign)
	step := s.crashStep
	if testing.Short() {
		step = max(step, total/15)
	}
	t.Logf("the campaign makes %d journal writes; crashing at every %d", total, step)
	for k := 1; k <= total; k += step {
		crashOnce(t, newJournal, campaign, k)
		if t.Failed() {
			t.Fatalf("crash at write %d of %d failed", k, total)
		}
	}
}

// TestCrashAtEveryJournalWriteDevicesReboot (issue 21) is
// TestCrashAtEveryJournalWrite with simulated devices that die with the
// server and restart from their state file (crashCampaign.reboot), as the
// --simulate devices of the kill -9 process test do: an outcome a crash
// took is decided again with devices that kept only their durable facts.
// Pebble only: the rule it checks is about what a machine's crash loses.
func TestCrashAtEveryJournalWriteDevicesReboot(t *testing.T) {
	campaign := newCrashCampaign()
	campaign.reboot = true
	crashAtEveryWrite(t, storeNamed("pebble"), campaign)
}

// countWrites runs the campaign once without crashing.
func countWrites(t *testing.T, newJournal func() journal, c crashCampaign) int {
	clk := clocktest.New(epoch)
	if c.reboot {
		c.transport.StateFile = filepath.Join(t.TempDir(), "sim-state")
	}
	cs, tr, up := crashSetup(t, clk, -1, newJournal(), c.transport)
	defer tr.Close()
	for _, s := range c.specs {
		if err := tr.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	r := c.run(t, clk, cs, tr, up, nil)
	r.e.Stop()
	cs.EventStore.Close()
	return cs.n
}

func crashSetup(t *testing.T, clk *clocktest.Clock, crashAt int, j journal, cfg memtransport.Config) (*crashingStore, *memtransport.Transport, *transport.LateUplinks) {
	t.Helper()
	cs := &crashingStore{EventStore: j.open(t), j: j, crashAt: crashAt, rng: rand.New(rand.NewPCG(uint64(crashAt), 7))}
	up := &transport.LateUplinks{}
	tr, err := memtransport.New(cfg, clk, up, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cs, tr, up
}

func crashOnce(t *testing.T, newJournal func() journal, c crashCampaign, k int) {
	ctx := context.Background()
	clk := clocktest.New(epoch)
	if c.reboot {
		c.transport.StateFile = filepath.Join(t.TempDir(), "sim-state")
	}
	cs, tr, up := crashSetup(t, clk, k, newJournal(), c.transport)
	defer tr.Close()
	for _, s := range c.specs {
		if err := tr.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	r1 := c.run(t, clk, cs, tr, up, cs.crashed)
	if c.reboot {
		// The devices die with the server: what they had not made durable
		// is gone, and so are the downlinks on the wire.
		tr.Close()
	}
	r1.e.Stop()
	up.Set(nil)
	cs.EventStore.Close()
	// The server is down for a moment: downlinks already on the wire reach
	// their devices, whose answers are lost.
	clk.Advance(2 * time.Second)
	if c.reboot {
		var err error
		if tr, err = memtransport.New(c.transport, clk, up, nil); err != nil {
			t.Fatalf("crash at write %d: restarting the devices: %v", k, err)
		}
		defer tr.Close()
		for _, s := range c.specs {
			if err := tr.Add(s); err != nil {
				t.Fatal(err)
			}
		}
	}

	st := cs.j.open(t) // what the crash left
	defer st.Close()
	// No durable event is lost.
	for i, want := range cs.acked {
		found := false
		err := st.Load(ctx, cs.keys[i], want.Seq-1, func(e persistence.Event) error {
			if e.Seq == want.Seq {
				found = bytes.Equal(e.Payload, want.Payload) && e.Type == want.Type
			}
			return errStop
		})
		if err != nil && !errors.Is(err, errStop) {
			t.Fatalf("crash at write %d: %v", k, err)
		}
		if !found {
			t.Fatalf("crash at write %d: acknowledged event %s#%d is missing or different", k, cs.keys[i], want.Seq)
		}
	}
	// Each task's state as its actor recovers it (from records) is the
	// state its journal folds to.
	for id := range c.tasks {
		checkTaskRecovery(t, fmt.Sprintf("crash at write %d", k), st, id, true)
	}
	r2 := c.run(t, clk, st, tr, up, nil)
	defer r2.e.Stop()
	for _, s := range c.specs {
		d, _ := tr.Device(s.ID)
		cnt := d.Counters
		if n := c.upgrades(s.ID); cnt.Upgrades != n || cnt.Executes > n || cnt.PCPExecutes > n {
			t.Errorf("crash at write %d: %s upgraded %d times (want %d), %d Executes, %d PCP 0x17", k, s.ID, cnt.Upgrades, n, cnt.Executes, cnt.PCPExecutes)
		}
	}
	// A task created after the one before it ended (c.after) finds its
	// devices free: none of its sub-tasks needed a second attempt (a Task
	// Conflict retried).
	for id := range c.after {
		v, err := r2.e.TaskDevices(ctx, id, 0, len(c.tasks[id].GetDeviceIds()), 0)
		if err != nil {
			t.Fatalf("crash at write %d: %v", k, err)
		}
		for _, sub := range v.Subtasks {
			if sub.Attempt != 1 {
				t.Errorf("crash at write %d: task %s ran %d attempts on %s (last: %v %q)", k, id, sub.Attempt, sub.DeviceID, sub.Reason, sub.Detail)
			}
		}
	}
	r2.mu.Lock()
	defer r2.mu.Unlock()
	if len(r2.violations) > 0 {
		t.Errorf("crash at write %d: cell budget broken: %v", k, r2.violations[0])
	}
}

var errStop = errors.New("stop")

// checkTaskRecovery checks that task id as its actor recovers it from store
// equals the fold of its journal: the same header, every row the same (the
// numbers of entries into WAITING included if numbered: a task converted
// from an old snapshot keeps only their order), the same whole-state
// encoding (counters, queue order) and the same resumed effects.
func checkTaskRecovery(t *testing.T, name string, store persistence.EventStore, id string, numbered bool) {
	t.Helper()
	folded, recovered, fromRecords, err := actors.TaskStates(context.Background(), store, id)
	if err != nil {
		t.Fatalf("%s: task %s: %v", name, id, err)
	}
	if folded.Created() && !fromRecords {
		t.Fatalf("%s: task %s exists but has no records", name, id)
	}
	if !folded.Created() {
		if recovered.Created() || fromRecords {
			t.Fatalf("%s: task %s: records of a task whose creation is not in the journal", name, id)
		}
		return
	}
	same := func(a, b proto.Message) bool { return proto.Equal(a, b) }
	if !same(taskfsm.Header(folded), taskfsm.Header(recovered)) {
		t.Fatalf("%s: task %s: header %v, the journal folds to %v", name, id, taskfsm.Header(recovered), taskfsm.Header(folded))
	}
	for pos := range folded.Progress().Total {
		a, b := taskfsm.Row(folded, pos), taskfsm.Row(recovered, pos)
		if !numbered {
			a.Queued, b.Queued = 0, 0
		}
		if !same(a, b) {
			t.Fatalf("%s: task %s: row %d is %v, the journal folds to %v", name, id, pos, b, a)
		}
	}
	det := proto.MarshalOptions{Deterministic: true}
	a, errA := det.Marshal(taskfsm.Snapshot(folded))
	b, errB := det.Marshal(taskfsm.Snapshot(recovered))
	if errA != nil || errB != nil || !bytes.Equal(a, b) || folded.Progress() != recovered.Progress() || folded.Status() != recovered.Status() {
		t.Fatalf("%s: task %s: recovered %+v %v, the journal folds to %+v %v", name, id, recovered.Progress(), recovered.Status(), folded.Progress(), folded.Status())
	}
	ra, rb := taskfsm.Resume(folded), taskfsm.Resume(recovered)
	if !slices.EqualFunc(ra, rb, func(x, y *messages.TaskEffect) bool { return proto.Equal(x, y) }) {
		t.Fatalf("%s: task %s: resumes %v, the journal's state %v", name, id, rb, ra)
	}
}
