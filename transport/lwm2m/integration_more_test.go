package lwm2m_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/bench/sim/lwm2msim"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/download"
	"github.com/otafleet/otafleet/transport/lwm2m"
	"github.com/otafleet/otafleet/transport/pcp"
)

// TestQueueModeRestart: queue-mode devices (binding UQ) that restart in the
// middle of their download register again, resume at the next block (FOTA)
// or segment (PCP) and complete: no block or segment is fetched twice.
//
// The FOTA device asks for 16-byte blocks, so that its download goes on
// for hundreds of blocks after the restart: the engine's re-observation of
// /5/0/3 and /5/0/5 and its second write of /5/0/1 must reach the device
// before its last block, or the job stays in DOWNLOADING (a known bug:
// see TestFOTARestartFinishesBeforeReobservation).
func TestQueueModeRestart(t *testing.T) {
	s := newStack(t)
	const blockSize = 16
	fw := s.start("qr", 3000, lwm2msim.Config{BlockSize: blockSize,
		Behaviour: lwm2msim.Behaviour{QueueMode: true, StopAfterBlocks: 3, RestartDelay: 20 * time.Millisecond}})
	sw := s.start("qs", 3001, lwm2msim.Config{ObjectsPCP: true,
		Behaviour: lwm2msim.Behaviour{QueueMode: true, StopAfterBlocks: 2, RestartDelay: 20 * time.Millisecond}})
	s.createTask("fota", s.fw, []string{"qr"})
	s.createTask("sota", s.sw, []string{"qs"})
	for _, id := range []string{"fota", "sota"} {
		if v := s.waitTask(id); v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS {
			t.Fatalf("%s: %v", id, outcomes(v))
		}
	}
	blocks := int((s.fw.Size + blockSize - 1) / blockSize)
	if st := fw.Stats(); st.Restarts != 1 || st.Registrations != 2 || st.Upgrades != 1 || st.BlocksFetched != blocks ||
		st.SHA256 != hex.EncodeToString(s.fw.SHA256[:]) {
		t.Errorf("FOTA device: %+v (the package has %d blocks: none fetched twice)", st, blocks)
	}
	if v, _ := fw.Versions(); v != "2.0" {
		t.Errorf("FOTA device runs %q, want 2.0", v)
	}
	segments := int(pcp.SegmentCount(s.sw.Size, 500))
	if st := sw.Stats(); st.Restarts != 1 || st.Registrations != 2 || st.Upgrades != 1 || st.SegmentsFetched != segments ||
		st.SHA256 != hex.EncodeToString(s.sw.SHA256[:]) {
		t.Errorf("PCP device: %+v (the package has %d segments: none fetched twice)", st, segments)
	}
	if _, v := sw.Versions(); v != "V2.0" {
		t.Errorf("PCP device runs %q, want V2.0", v)
	}
}

// heldDownlinks passes the engine's downlinks to next, except that those
// for device after its first write of /5/0/1 wait, in order, until
// release() reports true (polled on the wall clock, at most a minute).
type heldDownlinks struct {
	next    transport.Downlinks
	device  string
	release func() bool

	mu     sync.Mutex
	writes int
	held   chan *messages.Downlink // nil until the first held downlink
}

func (h *heldDownlinks) Send(ctx context.Context, dl *messages.Downlink) error {
	h.mu.Lock()
	hold := dl.GetDeviceId() == h.device && h.writes > 0
	if _, ok := dl.GetKind().(*messages.Downlink_Lwm2MWritePackageUri); ok && dl.GetDeviceId() == h.device {
		h.writes++
	}
	if !hold {
		h.mu.Unlock()
		return h.next.Send(ctx, dl)
	}
	if h.held == nil {
		h.held = make(chan *messages.Downlink, 100)
		go h.forward(h.held)
	}
	h.held <- dl
	h.mu.Unlock()
	return nil
}

func (h *heldDownlinks) forward(held <-chan *messages.Downlink) {
	waitCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for !h.release() && waitCtx.Err() == nil {
		tm := clock.Real().NewTimer(5 * time.Millisecond)
		select {
		case <-tm.C():
		case <-waitCtx.Done():
			tm.Stop()
		}
	}
	for dl := range held {
		_ = h.next.Send(context.Background(), dl)
	}
}

func (h *heldDownlinks) RevokeToken(ctx context.Context, r *messages.RevokeToken) error {
	return h.next.RevokeToken(ctx, r)
}

// TestFOTARestartFinishesBeforeReobservation: a device that restarts in
// the middle of its download and, registered again, fetches its remaining
// blocks before the engine's re-observation of object 5 and second write
// of /5/0/1 (which follow its new registration) reach it, must still
// upgrade. Here those downlinks are held until the download is complete.
//
// It used not to: the first value of the new observation of /5/0/3 (State
// 2) reached the device machine before the 2.04 of the write, while the
// URI was not yet acknowledged, and was ignored; the write of the same URI
// changes nothing on the device, so no notification followed and the job
// stayed in DOWNLOADING until T6. The engine now writes the URI before it
// observes again, so the observation's first value follows the 2.04.
func TestFOTARestartFinishesBeforeReobservation(t *testing.T) {
	var dev atomic.Pointer[lwm2msim.Device]
	s := newStackVia(t, func(next transport.Downlinks) transport.Downlinks {
		return &heldDownlinks{next: next, device: "x", release: func() bool {
			d := dev.Load()
			if d == nil {
				return false
			}
			state, _ := d.FirmwareState()
			return state == 2
		}}
	})
	d := s.start("x", 3300, lwm2msim.Config{Behaviour: lwm2msim.Behaviour{StopAfterBlocks: 3, RestartDelay: 20 * time.Millisecond}})
	dev.Store(d)
	s.createTask("fota", s.fw, []string{"x"})
	if v := s.waitTask("fota"); v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS {
		t.Fatalf("task: %v", outcomes(v))
	}
	if st := d.Stats(); st.Restarts != 1 || st.Upgrades != 1 || st.BlocksFetched != int((s.fw.Size+1023)/1024) {
		t.Fatalf("device: %+v", st)
	}
}

// hookedDownlinks passes every downlink of the engine on to next, after
// showing it to hook (which runs in the device actor's goroutine: it must
// not call the engine).
type hookedDownlinks struct {
	next transport.Downlinks
	hook func(*messages.Downlink)
}

func (h hookedDownlinks) Send(ctx context.Context, dl *messages.Downlink) error {
	h.hook(dl)
	return h.next.Send(ctx, dl)
}

func (h hookedDownlinks) RevokeToken(ctx context.Context, r *messages.RevokeToken) error {
	return h.next.RevokeToken(ctx, r)
}

// newStackVia is newStack whose engine sends its downlinks through
// wrap(the server).
func newStackVia(t testing.TB, wrap func(transport.Downlinks) transport.Downlinks) *stack {
	t.Helper()
	return newStackKeeping(t, false, wrap)
}

// newStackKeeping is newStackVia whose server keeps its registrations in
// the stack's store when keep, so that a server restarted on it (restart)
// reaches the devices at once.
func newStackKeeping(t testing.TB, keep bool, wrap func(transport.Downlinks) transport.Downlinks) *stack {
	t.Helper()
	ctx := context.Background()
	s := &stack{t: t, clk: clocktest.New(epoch), store: memstore.New()}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.store.PutProduct(ctx, persistence.Product{ID: "meter", Name: "meter", Protocol: persistence.ProtocolLWM2M, SoftwarePCP: true}))
	put := func(id string, typ persistence.PackageType, version, source string, size int) persistence.Package {
		content := make([]byte, size)
		_, _ = rand.Read(content)
		n, sum, err := s.store.WriteBlob(ctx, id, bytes.NewReader(content), int64(size))
		must(err)
		p := persistence.Package{ID: id, ProductID: "meter", Type: typ, Version: version, SourceVersions: []string{source},
			FileName: id + ".bin", Size: n, SHA256: sum}
		must(s.store.PutPackage(ctx, p))
		return p
	}
	s.fw = put("fw-2.0", persistence.PackageFirmware, "2.0", "1.0", 6000)
	s.sw = put("app-2", persistence.PackageSoftware, "V2.0", "V1.0", 3000)
	var sessions persistence.Sessions
	if keep {
		sessions = s.store
	}
	s.up("127.0.0.1:0", sessions, wrap)
	return s
}

// up starts an engine on the stack's store (recovering what it journaled)
// and an LwM2M server on addr whose registrations are kept in sessions (nil:
// not kept), the engine's downlinks going through wrap(the server). Each
// is stopped at the end of the test unless the test killed it.
func (s *stack) up(addr string, sessions persistence.Sessions, wrap func(transport.Downlinks) transport.Downlinks) {
	t := s.t
	t.Helper()
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	late := &transport.LateDownlinks{}
	eng, err := actors.New(actors.Config{}, actors.Deps{Store: s.store, Clock: s.clk, Transport: wrap(late)})
	must(err)
	dl, err := download.New(download.Config{Packages: s.store, Handles: s.store, Key: bytes.Repeat([]byte{9}, 32), Clock: s.clk,
		Authorize: eng.AuthorizeDownload, OnServed: eng.DownloadServed})
	must(err)
	// As serve does: the server (and the registrations it kept) exists
	// before the engine recovers, and serves once it has.
	srv, err := lwm2m.New(lwm2m.Config{Addr: addr, Devices: s.store, Packages: s.store, Tokens: dl, Uplinks: eng, Clock: s.clk, Sessions: sessions})
	must(err)
	late.Set(srv)
	must(eng.Start(ctx))
	s.eng, s.srv = eng, srv
	if s.beforeServe != nil {
		s.beforeServe()
	}
	srv.Start()
	t.Cleanup(func() {
		if s.killed[srv] {
			return
		}
		eng.Stop()
		srv.Close()
	})
}

// restart kills the engine and the server and starts new ones on the same
// store and address, the server keeping its registrations in the store.
func (s *stack) restart(wrap func(transport.Downlinks) transport.Downlinks) {
	s.t.Helper()
	addr := s.srv.Addr()
	s.kill()
	s.up(addr, s.store, wrap)
}

// kill stops the engine and the server as a SIGKILL of the process would:
// nothing more is journaled or sent.
func (s *stack) kill() {
	if s.killed == nil {
		s.killed = map[*lwm2m.Server]bool{}
	}
	s.killed[s.srv] = true
	s.eng.Stop()
	s.srv.Kill()
}

// start registers the device id and starts it with cfg, completed with the
// stack's server, firmware 1.0 (software V1.0 with PCP), good radio in a
// cell of its own, and version 2.0 installed unless cfg says otherwise.
func (s *stack) start(id string, cell int64, cfg lwm2msim.Config) *lwm2msim.Device {
	s.t.Helper()
	ctx := context.Background()
	if err := s.store.CreateDevices(ctx, []persistence.Device{{ID: id, ProductID: "meter"}}); err != nil {
		s.t.Fatal(err)
	}
	cfg.Server, cfg.Endpoint, cfg.FwVersion, cfg.CellID = s.srv.Addr(), id, "1.0", cell
	if cfg.ObjectsPCP {
		cfg.SwVersion = "V1.0"
	}
	cfg.RSRP, cfg.SINR = coverage(0)
	if cfg.NewVersion == nil {
		cfg.NewVersion = func(string) string { return "2.0" }
	}
	d, err := lwm2msim.Start(ctx, cfg)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(d.Stop)
	return d
}

// waitStalled waits until each device's job is in the given stage.
func (s *stack) waitStalled(stalls map[string]messages.Stage) {
	s.t.Helper()
	ctx := context.Background()
	waitFor(s.t, "the devices to stall", 60*time.Second, func() bool {
		for id, stage := range stalls {
			if d, err := s.eng.Device(ctx, id); err != nil || d.State.Stage != stage {
				return false
			}
		}
		return true
	})
}

// sleepy is a queue-mode device whose clock the test holds: it stays awake
// (its awake window never closes while that clock stands still) until the
// engine sends it the downlink of step asleepAt; that clock then jumps past
// the awake window, so that the device drops the request, and every one
// after it, unanswered, as a sleeping NB-IoT device does. Nothing wakes it
// again: it sends no uplink (its registration lifetime is long).
type sleepy struct {
	clk      *clocktest.Clock
	asleepAt string
}

// step names the downlinks that start the steps T5 and T8 wait on.
func step(dl *messages.Downlink) string {
	switch dl.GetKind().(type) {
	case *messages.Downlink_Lwm2MWritePackageUri:
		return "write /5/0/1"
	case *messages.Downlink_Lwm2MExecute:
		return "execute /5/0/2"
	case *messages.Downlink_PcpNotifyNewVersion:
		return "0x14"
	case *messages.Downlink_PcpExecute:
		return "0x17"
	case *messages.Downlink_PcpDownloadResultAck:
		return "0x16 ack"
	case *messages.Downlink_PcpSegmentResponse:
		return fmt.Sprintf("0x15 #%d", dl.GetPcpSegmentResponse().GetSegmentNo())
	}
	return ""
}

// longLifetime keeps a registration alive (and the device's updates away)
// while the test moves the fake clock by tens of minutes.
const longLifetime = 48 * time.Hour

// TestStartAndResultTimeouts: over UDP, T5 (the device does not start its
// download), T8 (it does not start the update) and T9 (it does not report
// the upgrade result, and the version read shows the old version) end FOTA
// and PCP sub-tasks with their exact reasons.
//
// The T5 and T8 devices are queue-mode devices that fall asleep just as the
// step's request goes out (the package notification, the Execute / 0x17),
// so the request is never answered; the T9 devices take an hour to
// install.
func TestStartAndResultTimeouts(t *testing.T) {
	sleepers := map[string]sleepy{
		"fota-t5": {clocktest.New(epoch), "write /5/0/1"},
		"fota-t8": {clocktest.New(epoch), "execute /5/0/2"},
		"pcp-t5":  {clocktest.New(epoch), "0x14"},
		"pcp-t8":  {clocktest.New(epoch), "0x17"},
	}
	s := newStackVia(t, func(next transport.Downlinks) transport.Downlinks {
		return hookedDownlinks{next: next, hook: func(dl *messages.Downlink) {
			if z, ok := sleepers[dl.GetDeviceId()]; ok && z.asleepAt == step(dl) {
				z.clk.Advance(time.Minute) // past the 10 s awake window
			}
		}}
	})
	devs := map[string]*lwm2msim.Device{}
	cell := int64(3100)
	for _, id := range []string{"fota-t5", "fota-t8", "pcp-t5", "pcp-t8"} {
		cell++
		devs[id] = s.start(id, cell, lwm2msim.Config{ObjectsPCP: id[:3] == "pcp", Lifetime: longLifetime, Clock: sleepers[id].clk,
			Behaviour: lwm2msim.Behaviour{QueueMode: true}})
	}
	for _, id := range []string{"fota-t9", "pcp-t9"} {
		cell++
		devs[id] = s.start(id, cell, lwm2msim.Config{ObjectsPCP: id[:3] == "pcp", Lifetime: longLifetime,
			Behaviour: lwm2msim.Behaviour{UpdateDelay: time.Hour}})
	}
	s.createTask("fota", s.fw, []string{"fota-t5", "fota-t8", "fota-t9"})
	s.createTask("sota", s.sw, []string{"pcp-t5", "pcp-t8", "pcp-t9"})
	s.waitStalled(map[string]messages.Stage{
		"fota-t5": messages.Stage_STAGE_NOTIFIED, "fota-t8": messages.Stage_STAGE_DOWNLOADED, "fota-t9": messages.Stage_STAGE_UPGRADING,
		"pcp-t5": messages.Stage_STAGE_NOTIFIED, "pcp-t8": messages.Stage_STAGE_DOWNLOADED, "pcp-t9": messages.Stage_STAGE_UPGRADING,
	})
	// 31 minutes pass: T5 and T8 (3 min) and T9 (30 min) expire; T10, which
	// the version read after T9 runs under (3 min), does not, so the
	// devices' answers decide the T9 outcome.
	for range 31 {
		s.eng.Settle()
		s.clk.Advance(time.Minute)
	}
	s.eng.Settle()
	want := map[string]string{
		"fota-t5": "Waiting for device start download package timeout",
		"fota-t8": "Waiting for device start to update timeout",
		"fota-t9": "Wait for the device to report upgrade result timeout",
		"pcp-t5":  "Waiting for device start download package timeout",
		"pcp-t8":  "Waiting for device start to update timeout",
		"pcp-t9":  "Wait for the device to report upgrade result timeout",
	}
	got := outcomes(s.waitTask("fota"))
	for id, v := range outcomes(s.waitTask("sota")) {
		got[id] = v
	}
	for id, reason := range want {
		if w := messages.SubtaskStatus_SUBTASK_STATUS_FAIL.String() + ": " + reason; got[id] != w {
			t.Errorf("%s: %q, want %q", id, got[id], w)
		}
	}
	// What the devices did: the T5 ones never started, the T8 ones
	// downloaded everything and never executed, the T9 ones are still
	// installing.
	for id, d := range devs {
		st := d.Stats()
		fw, sw := d.Versions()
		var bad bool
		switch id {
		case "fota-t5":
			state, _ := d.FirmwareState()
			bad = st.BlocksFetched != 0 || state != 0
		case "pcp-t5":
			bad = st.SegmentsFetched != 0
		case "fota-t8":
			bad = st.BlocksFetched != int((s.fw.Size+1023)/1024) || st.Executes != 0
		case "pcp-t8":
			bad = st.SegmentsFetched != int(pcp.SegmentCount(s.sw.Size, 500)) || st.Executes != 0
		case "fota-t9", "pcp-t9":
			bad = st.Executes != 1 || st.Upgrades != 0
		}
		if bad || fw != "1.0" || (id[:3] == "pcp" && sw != "V1.0") {
			t.Errorf("%s: fw %s sw %s, %+v", id, fw, sw, st)
		}
	}
}

// TestFOTAVersionMismatch: a device installs the package (Update Result 1)
// but then reports a version other than the package's: the sub-task fails
// with the version-mismatch reason.
func TestFOTAVersionMismatch(t *testing.T) {
	s := newStack(t)
	d := s.start("wrong", 3200, lwm2msim.Config{NewVersion: func(string) string { return "2.0-rc1" }})
	s.createTask("fota", s.fw, []string{"wrong"})
	got := outcomes(s.waitTask("fota"))
	if want := messages.SubtaskStatus_SUBTASK_STATUS_FAIL.String() + ": Device version after upgrade does not match the target version"; got["wrong"] != want {
		t.Fatalf("%q, want %q", got["wrong"], want)
	}
	if fw, _ := d.Versions(); fw != "2.0-rc1" || d.Stats().Upgrades != 1 {
		t.Fatalf("device: fw %s, %+v", fw, d.Stats())
	}
	if state, result := d.FirmwareState(); state != 0 || result != 1 {
		t.Fatalf("object 5: State %d, Update Result %d; want 0 and 1", state, result)
	}
}
