package lwm2m_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/actors/cell/cellfsm"
	"github.com/otafleet/otafleet/actors/device/devicefsm"
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

// The integration tests run the real LwM2M server over UDP on loopback,
// the real engine (its deadlines on a fake clock: the happy paths never
// wait for one) and simulated LwM2M devices, each on its own socket.

type stack struct {
	t      testing.TB
	clk    *clocktest.Clock
	store  *memstore.Store
	eng    *actors.Engine
	srv    *lwm2m.Server
	dl     *download.Server
	fw, sw persistence.Package

	killed map[*lwm2m.Server]bool // servers the test killed (stack.kill)
	// beforeServe, when set, runs in up once the engine has recovered and
	// before the server serves (its socket is open meanwhile).
	beforeServe func()
	goodOnly    bool          // every device in good coverage (benchmarks)
	maxUsed     atomic.Uint32 // the most budget units any cell had in use
	violations  atomic.Int64  // cell steps with more than the budget in use
}

// newStack starts the engine, the download server (its Config tuned by
// tune) and the LwM2M server. The engine's downlinks reach the LwM2M
// server and its revocations the download server too, as serve wires them.
func newStack(t testing.TB, tune ...func(*download.Config)) *stack {
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

	late := &transport.LateDownlinks{}
	cellCfg := cellfsm.DefaultConfig()
	var err error
	s.eng, err = actors.New(actors.Config{}, actors.Deps{Store: s.store, Clock: s.clk, Transport: late,
		CellStepped: func(_ string, st cellfsm.State) {
			u := st.Used()
			if u > cellCfg.Budget {
				s.violations.Add(1)
			}
			for {
				m := s.maxUsed.Load()
				if u <= m || s.maxUsed.CompareAndSwap(m, u) {
					break
				}
			}
		}})
	must(err)
	must(s.eng.Start(ctx))
	t.Cleanup(s.eng.Stop)
	dlCfg := download.Config{Packages: s.store, Handles: s.store, Key: bytes.Repeat([]byte{9}, 32), Clock: s.clk,
		Authorize: s.eng.AuthorizeDownload, OnServed: s.eng.DownloadServed}
	for _, f := range tune {
		f(&dlCfg)
	}
	s.dl, err = download.New(dlCfg)
	must(err)
	s.srv, err = lwm2m.New(lwm2m.Config{Addr: "127.0.0.1:0", DTLSAddr: "127.0.0.1:0", Devices: s.store, Packages: s.store, Tokens: s.dl, Uplinks: s.eng, Clock: s.clk})
	must(err)
	s.srv.Start()
	t.Cleanup(func() { s.srv.Close() })
	late.Set(revoking{Downlinks: s.srv, dl: s.dl})
	return s
}

// revoking is an LwM2M server whose revocations reach the download server
// as well (serve's router does the same).
type revoking struct {
	transport.Downlinks
	dl *download.Server
}

func (r revoking) RevokeToken(ctx context.Context, rt *messages.RevokeToken) error {
	return errors.Join(r.dl.Revoke(ctx, rt.GetTaskId(), rt.GetDeviceId(), rt.GetAttempt()), r.Downlinks.RevokeToken(ctx, rt))
}

// coverage spreads devices over good, medium and poor radio.
func coverage(i int) (rsrp, sinr *int32) {
	v := func(x int32) *int32 { return &x }
	switch q := i % 20; {
	case q < 14:
		return v(-90), v(12)
	case q < 18:
		return v(-110), v(2)
	default:
		return v(-121), v(-5)
	}
}

// devices registers n devices prefix0.. in the registry and starts them,
// spread over cells 1000..1009.
func (s *stack) devices(prefix string, n int, withPCP bool, b func(i int) lwm2msim.Behaviour) []*lwm2msim.Device {
	s.t.Helper()
	ctx := context.Background()
	var regs []persistence.Device
	for i := range n {
		regs = append(regs, persistence.Device{ID: fmt.Sprintf("%s%d", prefix, i), ProductID: "meter"})
	}
	if err := s.store.CreateDevices(ctx, regs); err != nil {
		s.t.Fatal(err)
	}
	devs := make([]*lwm2msim.Device, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rsrp, sinr := coverage(i)
			if s.goodOnly {
				rsrp, sinr = coverage(0)
			}
			cfg := lwm2msim.Config{
				Server: s.srv.Addr(), Endpoint: regs[i].ID, FwVersion: "1.0", SwVersion: "V1.0",
				RSRP: rsrp, SINR: sinr, CellID: int64(1000 + i%10), ObjectsPCP: withPCP,
				NewVersion: func(string) string { return "2.0" },
			}
			if b != nil {
				cfg.Behaviour = b(i)
			}
			d, err := lwm2msim.Start(ctx, cfg)
			if err != nil {
				errs <- fmt.Errorf("%s: %w", regs[i].ID, err)
				return
			}
			devs[i] = d
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() {
		for _, d := range devs {
			d.Stop()
		}
	})
	return devs
}

func (s *stack) createTask(id string, p persistence.Package, devices []string) {
	s.t.Helper()
	tt, proto := messages.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, messages.Protocol_PROTOCOL_LWM2M_FOTA
	if p.Type == persistence.PackageSoftware {
		tt, proto = messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE, messages.Protocol_PROTOCOL_LWM2M_PCP
	}
	err := s.eng.CreateTask(context.Background(), &messages.CreateTask{
		TaskId: id, Name: id, TaskType: tt, Protocol: proto, DeviceIds: devices,
		Package: &messages.Package{PackageId: p.ID, Version: p.Version, SourceVersions: p.SourceVersions, Size: p.Size,
			FileName: p.FileName, Sha256: hex.EncodeToString(p.SHA256[:]), SegmentSize: 500, CheckCode: uint32(pcp.CheckCode(p.SHA256))},
	})
	if err != nil {
		s.t.Fatal(err)
	}
}

func waitFor(t testing.TB, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for !cond() {
		tm := clock.Real().NewTimer(10 * time.Millisecond)
		select {
		case <-ctx.Done():
			tm.Stop()
			t.Fatalf("timed out waiting for %s", what)
		case <-tm.C():
		}
	}
}

func (s *stack) waitTask(id string) actors.TaskView {
	s.t.Helper()
	// Generous: under load a lost datagram costs go-coap's retransmissions
	// (up to about 45 s) before the device answers.
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	for {
		v, err := s.eng.Task(context.Background(), id)
		if err == nil && v.Status.Final() {
			break
		}
		if ctx.Err() != nil {
			s.dumpStuck(id)
			s.t.Fatalf("timed out waiting for task %s", id)
		}
		tm := clock.Real().NewTimer(10 * time.Millisecond)
		<-tm.C()
	}
	v, err := s.eng.TaskDevices(context.Background(), id, 0, 1000, 0)
	if err != nil {
		s.t.Fatal(err)
	}
	return v
}

// dumpStuck logs the devices of a task that still run, with their stage.
func (s *stack) dumpStuck(id string) {
	v, err := s.eng.TaskDevices(context.Background(), id, 0, 1000, messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING)
	if err != nil {
		return
	}
	for _, st := range v.Subtasks {
		d, err := s.eng.Device(context.Background(), st.DeviceID)
		if err == nil {
			s.t.Logf("still running: %s stage %v online %v", st.DeviceID, d.State.Stage, d.State.Online)
		}
	}
}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

func outcomes(v actors.TaskView) map[string]string {
	out := map[string]string{}
	for _, st := range v.Subtasks {
		s := st.Status.String()
		if r := messages.ReasonText(st.Reason); r != "" {
			s += ": " + r
		}
		out[st.DeviceID] = s
	}
	return out
}

// TestFOTAAndPCPOverUDP: a 500-device FOTA task and a 200-device PCP SOTA
// task complete across 10 cells with mixed coverage; no cell ever has more
// than its budget in use; no download handle record is left.
func TestFOTAAndPCPOverUDP(t *testing.T) {
	s := newStack(t)
	const nFOTA, nPCP = 500, 200
	fota := s.devices("f", nFOTA, false, nil)
	pcpDevs := s.devices("p", nPCP, true, nil)
	s.createTask("fota", s.fw, ids("f", nFOTA))
	s.createTask("sota", s.sw, ids("p", nPCP))
	for _, c := range []struct {
		id   string
		n    int
		devs []*lwm2msim.Device
		fw   bool
	}{{"fota", nFOTA, fota, true}, {"sota", nPCP, pcpDevs, false}} {
		v := s.waitTask(c.id)
		if v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS || v.Progress.Success != c.n {
			t.Fatalf("task %s ended %v %+v: %v", c.id, v.Status, v.Progress, outcomes(v))
		}
		for i, d := range c.devs {
			fw, sw := d.Versions()
			st := d.Stats()
			want := hex.EncodeToString(s.fw.SHA256[:])
			if !c.fw {
				want = hex.EncodeToString(s.sw.SHA256[:])
			}
			if (c.fw && fw != "2.0") || (!c.fw && sw != "V2.0") || st.SHA256 != want {
				t.Fatalf("%s device %d: fw %s sw %s, %+v", c.id, i, fw, sw, st)
			}
		}
	}
	if n := s.violations.Load(); n != 0 {
		t.Fatalf("%d cell steps over budget (max used %d)", n, s.maxUsed.Load())
	}
	if s.maxUsed.Load() == 0 {
		t.Fatal("no cell budget was ever used")
	}
	// Issue 21: each FOTA attempt's handle record went with its job (the
	// revocation comes before the outcome reaches the task).
	if n := handleRecords(t, s); n != 0 {
		t.Errorf("%d download handle records left after the tasks, want 0", n)
	}
}

// TestFailurePaths: every Update Result 2–9 and a PCP failure at each step
// end their devices with the exact reasons.
func TestFailurePaths(t *testing.T) {
	s := newStack(t)
	results := []int{2, 3, 4, 5, 6, 7, 8, 9}
	s.devices("u", len(results), false, func(i int) lwm2msim.Behaviour { return lwm2msim.Behaviour{UpdateResult: results[i]} })
	steps := []struct {
		at     messages.PcpCode
		result byte
	}{{messages.PcpCodeNotifyNewVersion, messages.PcpResultLowBattery}, {messages.PcpCodeReportDownloadResult, messages.PcpResultVerificationFailed},
		{messages.PcpCodeExecuteUpgrade, messages.PcpResultBusy}, {messages.PcpCodeReportUpgradeResult, messages.PcpResultInstallFailed}}
	s.devices("q", len(steps), true, func(i int) lwm2msim.Behaviour {
		return lwm2msim.Behaviour{PCPFailAt: steps[i].at, PCPResult: steps[i].result}
	})
	// A real client after a failed update (Update Result 8): State 2, and
	// a new URI only after the reset.
	strict := s.devices("x", 1, false, func(int) lwm2msim.Behaviour {
		return lwm2msim.Behaviour{UpdateResult: messages.UpdateResultUpdateFailed, StrictURI: true}
	})
	s.createTask("fota", s.fw, append(ids("u", len(results)), "x0"))
	s.createTask("sota", s.sw, ids("q", len(steps)))
	got := outcomes(s.waitTask("fota"))
	for i, r := range append(results, messages.UpdateResultUpdateFailed) {
		reason, _ := devicefsm.UpdateResultReason(int32(r))
		want := messages.SubtaskStatus_SUBTASK_STATUS_FAIL.String() + ": " + messages.ReasonText(reason)
		id := fmt.Sprintf("u%d", i)
		if i == len(results) {
			id = "x0"
		}
		if got[id] != want {
			t.Errorf("Update Result %d: %s %q, want %q", r, id, got[id], want)
		}
	}
	// Issue 20 item 6: the next task's attempt resets object 5 before its
	// URI, so x0 downloads and fails its update again, not its URI.
	if st, _ := strict[0].FirmwareState(); st != messages.FotaStateDownloaded {
		t.Fatalf("x0 after the failed update: State %d, want 2", st)
	}
	s.createTask("fota-again", s.fw, []string{"x0"})
	want := messages.SubtaskStatus_SUBTASK_STATUS_FAIL.String() + ": " + messages.ReasonText(messages.Reason_REASON_FW_UPDATE_FAILED)
	if got := outcomes(s.waitTask("fota-again")); got["x0"] != want {
		t.Errorf("x0, the next task: %q, want %q", got["x0"], want)
	}
	got = outcomes(s.waitTask("sota"))
	for i, st := range steps {
		want := messages.SubtaskStatus_SUBTASK_STATUS_FAIL.String() + ": " + messages.ReasonText(devicefsm.DeviceCodeReason(int32(st.result)))
		if id := fmt.Sprintf("q%d", i); got[id] != want {
			t.Errorf("PCP 0x%02x at %v: %s %q, want %q", st.result, st.at, id, got[id], want)
		}
	}
}

// TestRestartsAndQueueMode: devices that restart mid-download resume at
// the next block or segment and complete; a queue-mode device upgrades.
func TestRestartsAndQueueMode(t *testing.T) {
	s := newStack(t)
	// r0 restarts mid-download; r1 is in queue mode.
	fw := s.devices("r", 2, false, func(i int) lwm2msim.Behaviour {
		if i == 1 {
			return lwm2msim.Behaviour{QueueMode: true}
		}
		// Issue 20 item 5: a real client, which refuses a URI written
		// again while it downloads: it resumes by itself.
		return lwm2msim.Behaviour{StopAfterBlocks: 3, RestartDelay: 20 * time.Millisecond, StrictURI: true}
	})
	sw := s.devices("s", 1, true, func(int) lwm2msim.Behaviour {
		return lwm2msim.Behaviour{StopAfterBlocks: 2, RestartDelay: 20 * time.Millisecond}
	})
	s.createTask("fota", s.fw, ids("r", 2))
	s.createTask("sota", s.sw, ids("s", 1))
	for _, id := range []string{"fota", "sota"} {
		if v := s.waitTask(id); v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS {
			t.Fatalf("%s: %v", id, outcomes(v))
		}
	}
	blocks := int((s.fw.Size + 1023) / 1024)
	for i, d := range fw {
		st := d.Stats()
		restarts := 1 - i // r0 restarted, r1 did not
		if st.Restarts != restarts || st.Upgrades != 1 || st.BlocksFetched != blocks || st.SHA256 != hex.EncodeToString(s.fw.SHA256[:]) {
			t.Errorf("FOTA device %d: %+v (the package has %d blocks: none fetched twice)", i, st, blocks)
		}
	}
	segments := int(pcp.SegmentCount(s.sw.Size, 500))
	if st := sw[0].Stats(); st.Restarts != 1 || st.Upgrades != 1 || st.SegmentsFetched != segments {
		t.Errorf("PCP device: %+v (the package has %d segments)", st, segments)
	}
}

// TestDTLSDevicesUpgrade: devices with PSKs upgrade their firmware over
// DTLS; a device with the wrong PSK never registers.
func TestDTLSDevicesUpgrade(t *testing.T) {
	s := newStack(t)
	ctx := context.Background()
	const n = 5
	var regs []persistence.Device
	for i := range n {
		regs = append(regs, persistence.Device{ID: fmt.Sprintf("k%d", i), ProductID: "meter", PSK: []byte(fmt.Sprintf("psk-%d", i))})
	}
	if err := s.store.CreateDevices(ctx, regs); err != nil {
		t.Fatal(err)
	}
	start := func(id string, psk []byte) (*lwm2msim.Device, error) {
		rsrp, sinr := coverage(0)
		return lwm2msim.Start(ctx, lwm2msim.Config{Server: s.srv.DTLSAddr(), PSK: psk, Endpoint: id, FwVersion: "1.0",
			RSRP: rsrp, SINR: sinr, CellID: 2000, NewVersion: func(string) string { return "2.0" }, RequestTimeout: 3 * time.Second})
	}
	var devs []*lwm2msim.Device
	for i, r := range regs {
		d, err := start(r.ID, r.PSK)
		if err != nil {
			t.Fatalf("device %d over DTLS: %v", i, err)
		}
		t.Cleanup(d.Stop)
		devs = append(devs, d)
	}
	s.createTask("fota", s.fw, ids("k", n))
	if v := s.waitTask("fota"); v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS {
		t.Fatalf("task: %v", outcomes(v))
	}
	for i, d := range devs {
		if fw, _ := d.Versions(); fw != "2.0" || d.Stats().SHA256 != hex.EncodeToString(s.fw.SHA256[:]) {
			t.Fatalf("device %d: fw %s, %+v", i, fw, d.Stats())
		}
	}
	if d, err := start("k0", []byte("wrong")); err == nil {
		d.Stop()
		t.Fatal("a device with a wrong PSK registered")
	}
}

// TestTimeoutPaths: devices that stop answering at each step end with the
// step's timeout reason once the fake clock has moved past its deadline.
func TestTimeoutPaths(t *testing.T) {
	s := newStack(t)
	ctx := context.Background()
	start := func(id string, cfg lwm2msim.Config) {
		t.Helper()
		if err := s.store.CreateDevices(ctx, []persistence.Device{{ID: id, ProductID: "meter"}}); err != nil {
			t.Fatal(err)
		}
		cfg.Server, cfg.Endpoint, cfg.FwVersion = s.srv.Addr(), id, "1.0"
		cfg.NewVersion = func(string) string { return "2.0" }
		if cfg.RSRP == nil && cfg.CellID == 0 && id != "noradio" {
			cfg.RSRP, cfg.SINR = coverage(0)
			cfg.CellID = 3000
		}
		d, err := lwm2msim.Start(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Stop)
	}
	start("silent", lwm2msim.Config{Behaviour: lwm2msim.Behaviour{Silent: true}})
	start("noradio", lwm2msim.Config{})
	start("stalls", lwm2msim.Config{Behaviour: lwm2msim.Behaviour{StopAfterBlocks: 2, RestartDelay: time.Hour}})
	start("noreport", lwm2msim.Config{Behaviour: lwm2msim.Behaviour{RebootOnUpdate: true, RestartDelay: time.Hour}})
	start("pcp-silent", lwm2msim.Config{ObjectsPCP: true, SwVersion: "V1.0", Behaviour: lwm2msim.Behaviour{Silent: true}})
	start("pcp-stalls", lwm2msim.Config{ObjectsPCP: true, SwVersion: "V1.0", Behaviour: lwm2msim.Behaviour{StopAfterBlocks: 2, RestartDelay: time.Hour}})
	s.createTask("fota", s.fw, []string{"silent", "noradio", "stalls", "noreport"})
	s.createTask("sota", s.sw, []string{"pcp-silent", "pcp-stalls"})
	// Let every device get as far as it will, then 26 hours pass.
	stalls := map[string]messages.Stage{
		"silent": messages.Stage_STAGE_VERSION_QUERY, "noradio": messages.Stage_STAGE_IDLE, // its 4.04 ends it at once
		"stalls": messages.Stage_STAGE_DOWNLOADING, "noreport": messages.Stage_STAGE_UPGRADING,
		"pcp-silent": messages.Stage_STAGE_VERSION_QUERY, "pcp-stalls": messages.Stage_STAGE_DOWNLOADING,
	}
	waitFor(t, "the devices to stall", 60*time.Second, func() bool {
		for id, stage := range stalls {
			if d, err := s.eng.Device(ctx, id); err != nil || d.State.Stage != stage {
				return false
			}
		}
		return true
	})
	for range 26 * 60 {
		s.eng.Settle()
		s.clk.Advance(time.Minute)
	}
	got := outcomes(s.waitTask("fota"))
	fail := messages.SubtaskStatus_SUBTASK_STATUS_FAIL.String() + ": "
	for id, r := range map[string]messages.Reason{
		"silent":   messages.Reason_REASON_VERSION_REPORT_TIMEOUT, // T2: /3/0/3 never answered
		"noradio":  messages.Reason_REASON_CELL_ID_TIMEOUT,        // no radio values, no cell ID
		"stalls":   messages.Reason_REASON_DOWNLOAD_TIMEOUT,       // T6: the download stops
		"noreport": messages.Reason_REASON_VERSION_CHECK_TIMEOUT,  // T9, then T10: the device never comes back
	} {
		if want := fail + messages.ReasonText(r); got[id] != want {
			t.Errorf("%s: %q, want %q", id, got[id], want)
		}
	}
	got = outcomes(s.waitTask("sota"))
	for id, r := range map[string]messages.Reason{
		"pcp-silent": messages.Reason_REASON_VERSION_REPORT_TIMEOUT, // T2: 0x13 never answered
		"pcp-stalls": messages.Reason_REASON_DOWNLOAD_TIMEOUT,       // T6: segment requests stop
	} {
		if want := fail + messages.ReasonText(r); got[id] != want {
			t.Errorf("%s: %q, want %q", id, got[id], want)
		}
	}
}
