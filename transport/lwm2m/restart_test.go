package lwm2m_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/otafleet/otafleet/bench/sim/lwm2msim"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/pcp"
)

// The restart tests kill the engine and the LwM2M server in the middle of
// an upgrade, as a SIGKILL would, and start new ones on the same journal
// and address (registrations kept), with the simulated devices running on
// over UDP. The engine's clock is fake and does not move unless a test says
// so: a device that finishes did so from the restart itself, not from a
// step timeout.

// tap passes the engine's downlinks on to next, except those drop claims:
// those are lost, as downlinks journaled by a process that died before it
// sent them. It counts what went on, by device and step name (step).
type tap struct {
	next transport.Downlinks
	drop func(*messages.Downlink) bool

	mu   sync.Mutex
	seen map[string]int
}

func newTap(drop func(*messages.Downlink) bool) *tap {
	return &tap{drop: drop, seen: map[string]int{}}
}

// wrap makes the tap the engine's way to next (stack.up's wrap).
func (t *tap) wrap(next transport.Downlinks) transport.Downlinks {
	t.next = next
	return t
}

func (t *tap) Send(ctx context.Context, dl *messages.Downlink) error {
	if t.drop != nil && t.drop(dl) {
		return nil
	}
	t.mu.Lock()
	t.seen[dl.GetDeviceId()+" "+step(dl)]++
	t.mu.Unlock()
	return t.next.Send(ctx, dl)
}

func (t *tap) RevokeToken(ctx context.Context, r *messages.RevokeToken) error {
	return t.next.RevokeToken(ctx, r)
}

// sent is how many downlinks of the step name went on to device.
func (t *tap) sent(device, name string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.seen[device+" "+name]
}

// once returns a drop func that loses the first downlink of device whose
// step is name, and reports on lost when it did.
func once(device, name string, lost chan<- struct{}) func(*messages.Downlink) bool {
	var done sync.Once
	return func(dl *messages.Downlink) bool {
		if dl.GetDeviceId() != device || step(dl) != name {
			return false
		}
		dropped := false
		done.Do(func() { dropped = true; close(lost) })
		return dropped
	}
}

func waitClosed(t *testing.T, what string, c <-chan struct{}) {
	t.Helper()
	waitFor(t, what, 60*time.Second, func() bool {
		select {
		case <-c:
			return true
		default:
			return false
		}
	})
}

// taskStatus waits (on the wall clock, the engine's clock standing still)
// until task id is finished, and returns its devices' outcomes.
func (s *stack) finishedWithin(id string, limit time.Duration) map[string]string {
	s.t.Helper()
	waitFor(s.t, "task "+id+" to finish without a step timeout", limit, func() bool {
		v, err := s.eng.Task(context.Background(), id)
		return err == nil && v.Status.Final()
	})
	return outcomes(s.waitTask(id))
}

// TestRestartLostExecute: the engine journals the Execute (FOTA /5/0/2) and
// dies before sending it. After the restart the device, whose object 5
// shows State 2 and Update Result 0, gets it at once and upgrades, without
// waiting out T8 (the engine's clock does not move). The device executes
// exactly once.
func TestRestartLostExecute(t *testing.T) {
	lost := make(chan struct{})
	s := newStackKeeping(t, true, newTap(once("x", "execute /5/0/2", lost)).wrap)
	d := s.start("x", 3400, lwm2msim.Config{Lifetime: longLifetime})
	s.createTask("fota", s.fw, []string{"x"})
	waitClosed(t, "the Execute", lost)
	if state, result := d.FirmwareState(); state != 2 || result != 0 {
		t.Fatalf("before the restart the device shows State %d, Update Result %d; want 2 and 0", state, result)
	}
	s.restart(newTap(nil).wrap)
	got := s.finishedWithin("fota", 30*time.Second)
	if want := messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS.String(); got["x"] != want {
		t.Fatalf("x: %q, want %q", got["x"], want)
	}
	if st := d.Stats(); st.Executes != 1 || st.Upgrades != 1 {
		t.Fatalf("device: %+v, want one Execute and one upgrade", st)
	}
}

// TestRestartPCPFramesOnTheOldObservation: a PCP device downloading when
// the engine dies goes on sending its segment requests (0x15), then its
// download and upgrade results (0x16, 0x18), as notifications of the
// observation of /19/0/0 that the dead process made. The restarted server
// must deliver them: here the new observation of /19/0/0 (Resume's) never
// reaches the device, as when it is lost or still waits behind other
// requests. The device finishes on the device's clock alone, well within
// its segment timeout (30 s), and the engine's clock does not move.
//
// It used not to: the server dropped those notifications as stray
// responses, so the segment request was never answered, the device asked
// three more times and gave up, and the job waited for T6.
func TestRestartPCPFramesOnTheOldObservation(t *testing.T) {
	lost := make(chan struct{})
	s := newStackKeeping(t, true, newTap(once("p", "0x15 #2", lost)).wrap)
	dclk := clocktest.New(epoch)
	d := s.start("p", 3500, lwm2msim.Config{ObjectsPCP: true, Lifetime: longLifetime, Clock: dclk})
	s.createTask("sota", s.sw, []string{"p"})
	waitClosed(t, "the answer to the request for segment 2", lost)
	s.restart(newTap(func(dl *messages.Downlink) bool {
		return dl.GetDeviceId() == "p" && dl.GetLwm2MObserve().GetPath() == "/19/0/0"
	}).wrap)
	// The device's clock moves 20 ms per 10 ms of wall time: 16 s in all.
	waitFor(t, "the task to finish on the device's clock alone", 8*time.Second, func() bool {
		dclk.Advance(20 * time.Millisecond)
		v, err := s.eng.Task(context.Background(), "sota")
		return err == nil && v.Status.Final()
	})
	if got, want := outcomes(s.waitTask("sota"))["p"], messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS.String(); got != want {
		t.Fatalf("p: %q, want %q", got, want)
	}
	segments := int(pcp.SegmentCount(s.sw.Size, 500))
	if st := d.Stats(); st.Executes != 1 || st.Upgrades != 1 || st.SegmentsFetched != segments {
		t.Fatalf("device: %+v, want one Execute, one upgrade and %d segments", st, segments)
	}
}

// TestRestartLost0x17: PCP keeps its 0x17 at most once across a restart.
// Device "lost" never got the 0x17 (journaled, not sent): after the
// restart it gets none, and T8 ends the job; it installs nothing. Device
// "took" got it and installs after the restart (it answers a 0x13 with its
// old version until it has rebooted into the new one): it gets no second
// 0x17, and its unsolicited 0x18 ends the job as a success.
func TestRestartLost0x17(t *testing.T) {
	lost, took := make(chan struct{}), make(chan struct{})
	var sent sync.Once
	dropLost := once("lost", "0x17", lost)
	s := newStackKeeping(t, true, newTap(func(dl *messages.Downlink) bool {
		if dl.GetDeviceId() == "took" && step(dl) == "0x17" {
			sent.Do(func() { close(took) })
			return false
		}
		return dropLost(dl)
	}).wrap)
	tclk := clocktest.New(epoch)
	dLost := s.start("lost", 3600, lwm2msim.Config{ObjectsPCP: true, Lifetime: longLifetime})
	dTook := s.start("took", 3601, lwm2msim.Config{ObjectsPCP: true, Lifetime: longLifetime, Clock: tclk,
		Behaviour: lwm2msim.Behaviour{RebootOnUpdate: true, UpdateDelay: time.Minute}})
	s.createTask("sota", s.sw, []string{"lost", "took"})
	waitClosed(t, "the lost 0x17", lost)
	waitClosed(t, "the 0x17 the device takes", took)
	waitFor(t, "the device to take the 0x17", 30*time.Second, func() bool { return dTook.Stats().Executes == 1 })
	after := newTap(nil)
	s.restart(after.wrap)
	s.eng.Settle()
	tclk.Advance(time.Minute) // "took" installs and reboots
	tclk.Advance(time.Second) // and registers again
	waitFor(t, "took to succeed", 30*time.Second, func() bool {
		v, err := s.eng.Device(context.Background(), "took")
		return err == nil && v.State.Job == nil
	})
	for range 4 {
		s.eng.Settle()
		s.clk.Advance(time.Minute) // T8 of "lost"
	}
	got := s.finishedWithin("sota", 30*time.Second)
	want := map[string]string{
		"took": messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS.String(),
		"lost": messages.SubtaskStatus_SUBTASK_STATUS_FAIL.String() + ": Waiting for device start to update timeout",
	}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("%s: %q, want %q", id, got[id], w)
		}
	}
	if n, m := after.sent("lost", "0x17"), after.sent("took", "0x17"); n != 0 || m != 0 {
		t.Errorf("0x17 sent after the restart: %d to lost, %d to took; want none", n, m)
	}
	if st := dLost.Stats(); st.Executes != 0 || st.Upgrades != 0 {
		t.Errorf("lost: %+v, want no Execute", st)
	}
	if st := dTook.Stats(); st.Executes != 1 || st.Upgrades != 1 {
		t.Errorf("took: %+v, want one Execute and one upgrade", st)
	}
}

// TestRestartDue0x17: a kill after the 0x16's acknowledgement was journaled
// but before the device answered its write (here: the write never left)
// leaves a 0x17 that is due and never left the process. The restarted
// server sends it at once, not after T8, and once only, though the device
// repeats its 0x16 and that acknowledgement is answered; the device
// upgrades.
func TestRestartDue0x17(t *testing.T) {
	acked := make(chan struct{})
	before := newTap(once("due", "0x16 ack", acked))
	s := newStackKeeping(t, true, before.wrap)
	d := s.start("due", 3602, lwm2msim.Config{ObjectsPCP: true, Lifetime: longLifetime})
	s.createTask("sota", s.sw, []string{"due"})
	waitClosed(t, "the 0x16 acknowledgement", acked)
	s.eng.Settle()
	if n := before.sent("due", "0x17"); n != 0 {
		t.Fatalf("0x17 sent before the acknowledgement was answered: %d", n)
	}
	after := newTap(nil)
	s.restart(after.wrap)
	s.eng.Settle()
	s.clk.Advance(0) // the deadline Resume armed to fire at once (the fake clock fires when moved); T8 is far
	got := s.finishedWithin("sota", 30*time.Second)
	if w := messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS.String(); got["due"] != w {
		t.Errorf("due: %q, want %q", got["due"], w)
	}
	if n := after.sent("due", "0x17"); n != 1 {
		t.Errorf("0x17 sent %d times after the restart, want 1", n)
	}
	if st := d.Stats(); st.Executes != 1 || st.Upgrades != 1 {
		t.Errorf("due: %+v, want one Execute and one upgrade", st)
	}
}

// TestRestartReusedMessageIDs: a restarted server whose first requests to
// a device carry the Message IDs of the last requests the process before
// it sent (random Message IDs meet now and then) gets the device's cached
// answers to those (RFC 7252 deduplication: the old token, and the request
// not carried out). It must send them again with other Message IDs, not
// wait out the request timeout (for an observation, forever) while the
// device's job stalls.
func TestRestartReusedMessageIDs(t *testing.T) {
	lost := make(chan struct{})
	s := newStackKeeping(t, true, newTap(once("m", "execute /5/0/2", lost)).wrap)
	d := s.start("m", 3700, lwm2msim.Config{Lifetime: longLifetime})
	s.createTask("fota", s.fw, []string{"m"})
	waitClosed(t, "the Execute", lost)
	last := s.srv.LastMessageID("m")
	s.beforeServe = func() { s.srv.SetLastMessageID("m", last-3) } // Resume's three requests reuse the last three
	s.restart(newTap(nil).wrap)
	got := s.finishedWithin("fota", 30*time.Second)
	if want := messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS.String(); got["m"] != want {
		t.Fatalf("m: %q, want %q", got["m"], want)
	}
	if st := d.Stats(); st.Executes != 1 || st.Upgrades != 1 {
		t.Fatalf("device: %+v, want one Execute and one upgrade", st)
	}
}
