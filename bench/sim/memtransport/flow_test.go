package memtransport_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/messages"
)

const (
	success = messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS
	fail    = messages.SubtaskStatus_SUBTASK_STATUS_FAIL
	none    = messages.Reason_REASON_NONE
)

// TestHappyPath walks each flow with the real device machine: the scripted
// device answers exactly the downlinks devicefsm sends.
func TestHappyPath(t *testing.T) {
	for _, p := range protocols {
		for _, queue := range []bool{false, true} {
			if queue && p == messages.Protocol_PROTOCOL_MQTT {
				continue
			}
			name := "online"
			if queue {
				name = "queue"
			}
			t.Run(label(p, name), func(t *testing.T) {
				w := newWorld(t, memtransport.Config{})
				s := spec("d1", p)
				s.QueueMode = queue
				w.add(s)
				w.connect("d1")
				w.eng.start("d1", job(p, "task", 1, "2.0"))
				o := w.runUntilOutcome("d1", time.Hour)
				checkOutcome(t, o, success, none)
				ds := mustDevice(t, w.tr, "d1")
				if v := version(ds); v != "2.0" {
					t.Errorf("device runs %q, want 2.0", v)
				}
				c := ds.Counters
				if c.Upgrades != 1 || c.Downloads != 1 || c.DeliverErrors != 0 || c.Dropped != 0 {
					t.Errorf("counters %+v", c)
				}
				switch p {
				case messages.Protocol_PROTOCOL_MQTT:
					if c.UpgradeEvents != 1 {
						t.Errorf("upgrade events %d, want 1", c.UpgradeEvents)
					}
				case messages.Protocol_PROTOCOL_LWM2M_FOTA:
					if c.URIWrites != 1 || c.Executes != 1 {
						t.Errorf("URI writes %d, Executes %d, want 1, 1", c.URIWrites, c.Executes)
					}
				case messages.Protocol_PROTOCOL_LWM2M_PCP:
					if c.PCPNotifies != 1 || c.PCPExecutes != 1 || c.Segments != 4 {
						t.Errorf("0x14 %d, 0x17 %d, segments %d, want 1, 1, 4", c.PCPNotifies, c.PCPExecutes, c.Segments)
					}
				}
				if got := w.tr.Stats(); got != c {
					t.Errorf("Stats %+v, device counters %+v", got, c)
				}
			})
		}
	}
}

// TestQueueModeScriptedPSM: a queue-mode device asleep when the job starts
// gets it when it wakes; one that falls asleep mid-flow holds the downlinks
// and answers them once woken.
func TestQueueModeScriptedPSM(t *testing.T) {
	ctx := t.Context()
	w := newWorld(t, memtransport.Config{})
	s := spec("d1", messages.Protocol_PROTOCOL_LWM2M_FOTA)
	s.QueueMode = true
	w.add(s)
	w.connect("d1")
	if err := w.tr.Sleep(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	w.eng.start("d1", job(s.Protocol, "task", 1, "2.0"))
	w.clk.Advance(time.Minute)
	if st := w.eng.state("d1"); st.Stage != messages.Stage_STAGE_WAIT_ONLINE {
		t.Fatalf("stage %v, want WAIT_ONLINE", st.Stage)
	}
	if err := w.tr.Wake(ctx, "d1"); err != nil { // the engine sends its version query
		t.Fatal(err)
	}
	if err := w.tr.Sleep(ctx, "d1"); err != nil { // asleep before the query arrives: held
		t.Fatal(err)
	}
	w.clk.Advance(time.Minute)
	if ds := mustDevice(t, w.tr, "d1"); ds.Awake || ds.Counters.Downlinks != 0 || ds.Counters.Dropped != 0 {
		t.Fatalf("asleep device: %+v", ds)
	}
	if err := w.tr.Wake(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	checkOutcome(t, w.runUntilOutcome("d1", time.Hour), success, none)
	if err := w.tr.Sleep(ctx, "mqtt-none"); err == nil {
		t.Fatal("Sleep of an unknown device succeeded")
	}
}

// TestPSMCycle: automatic PSM never stalls an upgrade.
func TestPSMCycle(t *testing.T) {
	for _, p := range protocols[1:] {
		t.Run(short(p), func(t *testing.T) {
			w := newWorld(t, memtransport.Config{})
			s := spec("d1", p)
			s.QueueMode = true
			s.PSM = &memtransport.PSM{Awake: 2 * time.Second, Asleep: time.Minute}
			w.add(s)
			w.connect("d1")
			w.clk.Advance(10 * time.Second) // asleep by now
			if ds := mustDevice(t, w.tr, "d1"); ds.Awake {
				t.Fatal("PSM device still awake after 10 s idle")
			}
			w.eng.start("d1", job(p, "task", 1, "2.0"))
			checkOutcome(t, w.runUntilOutcome("d1", time.Hour), success, none)
			w.clk.Advance(10 * time.Second)
			if ds := mustDevice(t, w.tr, "d1"); ds.Awake {
				t.Fatal("PSM device awake 10 s after its upgrade")
			}
		})
	}
}

// TestFailFirstDownload: the first download fails with the protocol's code;
// the retry succeeds.
func TestFailFirstDownload(t *testing.T) {
	want := map[messages.Protocol]struct {
		reason messages.Reason
		code   int32
	}{
		messages.Protocol_PROTOCOL_MQTT:       {messages.Reason_REASON_PACKAGE_VERIFICATION_FAILED, 7},
		messages.Protocol_PROTOCOL_LWM2M_FOTA: {messages.Reason_REASON_FW_INTEGRITY_CHECK, 5},
		messages.Protocol_PROTOCOL_LWM2M_PCP:  {messages.Reason_REASON_PACKAGE_VERIFICATION_FAILED, 7},
	}
	for _, p := range protocols {
		t.Run(short(p), func(t *testing.T) {
			w := newWorld(t, memtransport.Config{})
			s := spec("d1", p)
			s.Behaviour.FailDownloads = 1
			w.add(s)
			w.connect("d1")
			w.eng.start("d1", job(p, "task", 1, "2.0"))
			o := w.runUntilOutcome("d1", time.Hour)
			checkOutcome(t, o, fail, want[p].reason)
			if o.GetResultCode() != want[p].code {
				t.Errorf("result code %d, want %d", o.GetResultCode(), want[p].code)
			}
			w.eng.start("d1", job(p, "task", 2, "2.0"))
			checkOutcome(t, w.runUntilOutcome("d1", time.Hour), success, none)
			if c := mustDevice(t, w.tr, "d1").Counters; c.Downloads != 2 || c.Upgrades != 1 {
				t.Errorf("downloads %d, upgrades %d; want 2, 1", c.Downloads, c.Upgrades)
			}
		})
	}
}

// TestCustomFailCode: FailCode is reported as given.
func TestCustomFailCode(t *testing.T) {
	w := newWorld(t, memtransport.Config{})
	s := spec("d1", messages.Protocol_PROTOCOL_LWM2M_FOTA)
	s.Behaviour = memtransport.Behaviour{FailDownloads: 1, FailCode: 2}
	w.add(s)
	w.connect("d1")
	w.eng.start("d1", job(s.Protocol, "task", 1, "2.0"))
	checkOutcome(t, w.runUntilOutcome("d1", time.Hour), fail, messages.Reason_REASON_FW_NOT_ENOUGH_STORAGE)
}

// TestSilentAndIgnoring: silence fails at the version step; a device that
// ignores the upgrade request fails at the download start (LwM2M) or at the
// result timeout (MQTT).
func TestSilentAndIgnoring(t *testing.T) {
	for _, p := range protocols {
		t.Run(label(p, "silent"), func(t *testing.T) {
			w := newWorld(t, memtransport.Config{})
			s := spec("d1", p)
			s.Behaviour.Silent = true
			w.add(s)
			w.connect("d1")
			w.eng.start("d1", job(p, "task", 1, "2.0"))
			checkOutcome(t, w.runUntilOutcome("d1", time.Hour), fail, messages.Reason_REASON_VERSION_REPORT_TIMEOUT)
		})
		t.Run(label(p, "ignore-upgrade"), func(t *testing.T) {
			w := newWorld(t, memtransport.Config{})
			s := spec("d1", p)
			s.Behaviour.IgnoreUpgrade = true
			w.add(s)
			w.connect("d1")
			w.eng.start("d1", job(p, "task", 1, "2.0"))
			want := messages.Reason_REASON_DOWNLOAD_START_TIMEOUT
			if p == messages.Protocol_PROTOCOL_MQTT {
				want = messages.Reason_REASON_RESULT_TIMEOUT
			}
			checkOutcome(t, w.runUntilOutcome("d1", 30*time.Hour), fail, want)
			// One upgrade command; FOTA writes an unacknowledged URI once
			// more, half way through T5 (issue 21: its writes may all have
			// been lost).
			commands := 1
			if p == messages.Protocol_PROTOCOL_LWM2M_FOTA {
				commands = 2
			}
			if c := mustDevice(t, w.tr, "d1").Counters; c.Downloads != 0 || c.UpgradeEvents+c.URIWrites+c.PCPNotifies != commands {
				t.Errorf("counters %+v, want %d upgrade commands", c, commands)
			}
		})
	}
}

// TestDropMidDownload: the connection drops halfway, the device comes back,
// the engine's reconnect handling resumes the same download and the job
// succeeds.
func TestDropMidDownload(t *testing.T) {
	for _, p := range protocols {
		t.Run(short(p), func(t *testing.T) {
			var disconnects int
			cfg := memtransport.Config{OnUplink: func(id string, in *messages.DeviceInput, err error) {
				if in.GetDisconnected() != nil {
					disconnects++
				}
			}}
			w := newWorld(t, cfg)
			s := spec("d1", p)
			s.Behaviour.DropMidDownload = 1
			w.add(s)
			w.connect("d1")
			w.eng.start("d1", job(p, "task", 1, "2.0"))
			checkOutcome(t, w.runUntilOutcome("d1", time.Hour), success, none)
			c := mustDevice(t, w.tr, "d1").Counters
			if disconnects != 1 || c.Downloads != 1 || c.Upgrades != 1 {
				t.Errorf("disconnects %d, downloads %d, upgrades %d; want 1, 1, 1", disconnects, c.Downloads, c.Upgrades)
			}
			if p == messages.Protocol_PROTOCOL_LWM2M_PCP && c.Segments != 4 {
				t.Errorf("segments %d, want 4 (the download resumed)", c.Segments)
			}
		})
	}
}

// TestRebootMidDownloadRealClient (issue 20 item 5): a FOTA device that,
// like a real LwM2M client, refuses a URI write outside State 0 drops its
// connection halfway and comes back. Resuming by itself, it must not be
// failed by a URI written again ("Invalid URI"); a device that comes back
// Idle is given the URI again.
func TestRebootMidDownloadRealClient(t *testing.T) {
	for _, forget := range []bool{false, true} {
		t.Run(fmt.Sprintf("forget=%v", forget), func(t *testing.T) {
			w := newWorld(t, memtransport.Config{})
			s := spec("d1", messages.Protocol_PROTOCOL_LWM2M_FOTA)
			s.Behaviour = memtransport.Behaviour{DropMidDownload: 1, StrictURI: true, ForgetURIOnReboot: forget}
			w.add(s)
			w.connect("d1")
			w.eng.start("d1", job(s.Protocol, "task", 1, "2.0"))
			checkOutcome(t, w.runUntilOutcome("d1", time.Hour), success, none)
			c := mustDevice(t, w.tr, "d1").Counters
			wantWrites, wantDownloads := 1, 1
			if forget {
				wantWrites, wantDownloads = 2, 2
			}
			if c.URIWrites != wantWrites || c.Downloads != wantDownloads || c.Upgrades != 1 {
				t.Errorf("URI writes %d, downloads %d, upgrades %d; want %d, %d, 1", c.URIWrites, c.Downloads, c.Upgrades, wantWrites, wantDownloads)
			}
		})
	}
}

// TestStayOffline: a device that drops and stays offline is brought back by
// the test; the job then finishes.
func TestStayOffline(t *testing.T) {
	w := newWorld(t, memtransport.Config{})
	s := spec("d1", messages.Protocol_PROTOCOL_LWM2M_FOTA)
	s.Behaviour = memtransport.Behaviour{DropMidDownload: 1, StayOffline: true}
	w.add(s)
	w.connect("d1")
	w.eng.start("d1", job(s.Protocol, "task", 1, "2.0"))
	w.clk.Advance(time.Minute)
	if ds := mustDevice(t, w.tr, "d1"); ds.Online {
		t.Fatal("device online after its drop")
	}
	w.connect("d1")
	checkOutcome(t, w.runUntilOutcome("d1", time.Hour), success, none)
}

// TestRefuseExecute: a refused Execute fails the job with the flow's
// reason; the retry succeeds.
func TestRefuseExecute(t *testing.T) {
	want := map[messages.Protocol]messages.Reason{
		messages.Protocol_PROTOCOL_LWM2M_FOTA: messages.Reason_REASON_FW_UPDATE_FAILED,
		messages.Protocol_PROTOCOL_LWM2M_PCP:  messages.Reason_REASON_DEVICE_BUSY,
	}
	for _, p := range protocols[1:] {
		t.Run(short(p), func(t *testing.T) {
			w := newWorld(t, memtransport.Config{})
			s := spec("d1", p)
			s.Behaviour.RefuseExecutes = 1
			// A FOTA client left in State 2 takes the retry's URI only
			// after the reset (issue 20 item 6).
			s.Behaviour.StrictURI = true
			w.add(s)
			w.connect("d1")
			w.eng.start("d1", job(p, "task", 1, "2.0"))
			checkOutcome(t, w.runUntilOutcome("d1", time.Hour), fail, want[p])
			w.eng.start("d1", job(p, "task", 2, "2.0"))
			checkOutcome(t, w.runUntilOutcome("d1", time.Hour), success, none)
			c := mustDevice(t, w.tr, "d1").Counters
			if c.Executes+c.PCPExecutes != 2 || c.Upgrades != 1 {
				t.Errorf("executes %d+%d, upgrades %d; want 2, 1", c.Executes, c.PCPExecutes, c.Upgrades)
			}
		})
	}
}

// TestWrongVersion: the device installs and reports success but runs
// another version: the engine's check fails the job.
func TestWrongVersion(t *testing.T) {
	for _, p := range protocols {
		t.Run(short(p), func(t *testing.T) {
			var upgraded []string
			w := newWorld(t, memtransport.Config{OnUpgrade: func(id, v string) { upgraded = append(upgraded, id+"@"+v) }})
			s := spec("d1", p)
			s.Behaviour.WrongVersion = "1.9"
			w.add(s)
			w.connect("d1")
			w.eng.start("d1", job(p, "task", 1, "2.0"))
			checkOutcome(t, w.runUntilOutcome("d1", time.Hour), fail, messages.Reason_REASON_VERSION_MISMATCH)
			if len(upgraded) != 1 || upgraded[0] != "d1@1.9" {
				t.Errorf("OnUpgrade calls %q, want [d1@1.9]", upgraded)
			}
		})
	}
}

// TestRebootOnInstall: the device re-registers after installing; the engine
// learns the result from the new session.
func TestRebootOnInstall(t *testing.T) {
	for _, p := range protocols {
		t.Run(short(p), func(t *testing.T) {
			w := newWorld(t, memtransport.Config{})
			s := spec("d1", p)
			s.Behaviour.RebootOnInstall = true
			w.add(s)
			w.connect("d1")
			w.eng.start("d1", job(p, "task", 1, "2.0"))
			checkOutcome(t, w.runUntilOutcome("d1", time.Hour), success, none)
			if c := mustDevice(t, w.tr, "d1").Counters; c.Upgrades != 1 || c.Executes+c.PCPExecutes > 1 {
				t.Errorf("counters %+v", c)
			}
		})
	}
}

// TestStopResetsFota: a stopped FOTA job writes an empty URI; the device
// abandons its download and never installs.
func TestStopResetsFota(t *testing.T) {
	w := newWorld(t, memtransport.Config{})
	s := spec("d1", messages.Protocol_PROTOCOL_LWM2M_FOTA)
	w.add(s)
	w.connect("d1")
	w.eng.start("d1", job(s.Protocol, "task", 1, "2.0"))
	w.clk.Advance(1200 * time.Millisecond) // downloading
	if ds := mustDevice(t, w.tr, "d1"); ds.FotaState != 1 {
		t.Fatalf("FOTA state %d, want 1 (downloading)", ds.FotaState)
	}
	w.eng.step("d1", &messages.DeviceInput{Kind: &messages.DeviceInput_StopJob{StopJob: &messages.StopJob{DeviceId: "d1", TaskId: "task"}}})
	checkOutcome(t, w.eng.last("d1"), messages.SubtaskStatus_SUBTASK_STATUS_STOPPED, messages.Reason_REASON_STOPPED)
	w.clk.Advance(time.Hour)
	ds := mustDevice(t, w.tr, "d1")
	if ds.FotaState != 0 || ds.FwVersion != "1.0" || ds.Counters.Upgrades != 0 {
		t.Fatalf("after stop: %+v", ds)
	}
}

// TestMQTTStopRevokesToken: revoking the token of a running MQTT download
// aborts it.
func TestMQTTStopRevokesToken(t *testing.T) {
	w := newWorld(t, memtransport.Config{})
	s := spec("d1", messages.Protocol_PROTOCOL_MQTT)
	w.add(s)
	w.connect("d1")
	w.eng.start("d1", job(s.Protocol, "task", 1, "2.0"))
	w.clk.Advance(600 * time.Millisecond)
	w.eng.step("d1", &messages.DeviceInput{Kind: &messages.DeviceInput_StopJob{StopJob: &messages.StopJob{DeviceId: "d1", TaskId: "task"}}})
	w.clk.Advance(time.Hour)
	ds := mustDevice(t, w.tr, "d1")
	if ds.FwVersion != "1.0" || ds.Counters.Upgrades != 0 || ds.Counters.Revocations != 1 {
		t.Fatalf("after stop: %+v", ds)
	}
}

// TestEngineRestartLearnsFinishedUpdate: the engine crashes after sending
// Execute (0x17; the MQTT event); the update completes while it is down;
// after recovery, its re-observation (Resume) or the device's reconnect
// tells it the outcome, and no second Execute is sent.
func TestEngineRestartLearnsFinishedUpdate(t *testing.T) {
	for _, p := range protocols {
		t.Run(short(p), func(t *testing.T) {
			w := newWorld(t, memtransport.Config{})
			w.add(spec("d1", p))
			w.connect("d1")
			w.eng.start("d1", job(p, "task", 1, "2.0"))
			for i := 0; ; i++ {
				c := mustDevice(t, w.tr, "d1").Counters
				if c.Executes+c.PCPExecutes > 0 || (p == messages.Protocol_PROTOCOL_MQTT && c.Downloads > 0) {
					break
				}
				if i > 1000 {
					t.Fatal("no Execute or download")
				}
				w.clk.Advance(10 * time.Millisecond)
			}
			w.eng.crash()
			w.clk.Advance(10 * time.Second) // the install completes, its report is lost
			if ds := mustDevice(t, w.tr, "d1"); version(ds) != "2.0" {
				t.Fatalf("device runs %q after the install", version(ds))
			}
			if o := w.eng.last("d1"); o != nil {
				t.Fatalf("outcome before recovery: %v", o)
			}
			w.eng.recover()
			if p == messages.Protocol_PROTOCOL_MQTT {
				// MQTT has nothing to observe: the device reconnects to the new server.
				w.connect("d1")
			}
			checkOutcome(t, w.runUntilOutcome("d1", time.Hour), success, none)
			c := mustDevice(t, w.tr, "d1").Counters
			if c.Executes+c.PCPExecutes > 1 || c.Upgrades != 1 {
				t.Errorf("counters %+v", c)
			}
		})
	}
}

// TestLostExecute: the engine crashes after journaling the Execute (FOTA
// /5/0/2, PCP 0x17) and before sending it. After recovery a FOTA device
// that shows State 2 with Update Result 0 gets the Execute at once and
// upgrades, long before T8; a PCP device gets no second 0x17 (nothing tells
// a lost one from one it took), waits out T8 and installs nothing.
func TestLostExecute(t *testing.T) {
	for _, p := range []messages.Protocol{messages.Protocol_PROTOCOL_LWM2M_FOTA, messages.Protocol_PROTOCOL_LWM2M_PCP} {
		t.Run(short(p), func(t *testing.T) {
			w := newWorld(t, memtransport.Config{})
			w.add(spec("d1", p))
			w.connect("d1")
			w.eng.mu.Lock()
			w.eng.crashOn = func(dl *messages.Downlink) bool {
				return dl.GetLwm2MExecute() != nil || dl.GetPcpExecute() != nil
			}
			w.eng.mu.Unlock()
			w.eng.start("d1", job(p, "task", 1, "2.0"))
			for i := 0; w.eng.state("d1").Stage != messages.Stage_STAGE_DOWNLOADED; i++ {
				if i > 1000 {
					t.Fatalf("no Execute; stage %v", w.eng.state("d1").Stage)
				}
				w.clk.Advance(10 * time.Millisecond)
			}
			w.clk.Advance(10 * time.Second)
			w.eng.recover()
			if p == messages.Protocol_PROTOCOL_LWM2M_PCP {
				checkOutcome(t, w.runUntilOutcome("d1", time.Hour), messages.SubtaskStatus_SUBTASK_STATUS_FAIL, messages.Reason_REASON_UPDATE_START_TIMEOUT)
				if c := mustDevice(t, w.tr, "d1").Counters; c.PCPExecutes != 0 || c.Upgrades != 0 {
					t.Errorf("counters %+v", c)
				}
				return
			}
			checkOutcome(t, w.runUntilOutcome("d1", 30*time.Second), success, none)
			if c := mustDevice(t, w.tr, "d1").Counters; c.Executes != 1 || c.Upgrades != 1 {
				t.Errorf("counters %+v", c)
			}
		})
	}
}

// TestAlreadyAtTarget: devices report the version they run. The engine
// succeeds at its version check; an MQTT upgrade event for the running
// version is answered with progress 100 and a PCP 0x14 with 0x03.
func TestAlreadyAtTarget(t *testing.T) {
	for _, p := range protocols {
		t.Run(short(p), func(t *testing.T) {
			w := newWorld(t, memtransport.Config{})
			w.add(spec("d1", p))
			w.connect("d1")
			w.eng.start("d1", job(p, "task", 1, "1.0"))
			checkOutcome(t, w.runUntilOutcome("d1", time.Hour), success, messages.Reason_REASON_SAME_VERSION)
		})
	}
	rec, tr, clk := newRecorded(t)
	for _, p := range []messages.Protocol{messages.Protocol_PROTOCOL_MQTT, messages.Protocol_PROTOCOL_LWM2M_PCP} {
		id := short(p)
		s := spec(id, p)
		if err := tr.Add(s); err != nil {
			t.Fatal(err)
		}
		connect(t, tr, id)
	}
	send(t, tr, &messages.Downlink{DeviceId: "mqtt", Kind: &messages.Downlink_MqttUpgrade{MqttUpgrade: &messages.MqttUpgrade{Job: job(messages.Protocol_PROTOCOL_MQTT, "t", 1, "1.0")}}})
	send(t, tr, &messages.Downlink{DeviceId: "pcp", Kind: &messages.Downlink_Lwm2MObserve{Lwm2MObserve: &messages.Lwm2MObserve{Path: "/19/0/0"}}})
	send(t, tr, &messages.Downlink{DeviceId: "pcp", Kind: &messages.Downlink_PcpNotifyNewVersion{PcpNotifyNewVersion: &messages.PcpNotifyNewVersion{Version: "1.0", SegmentSize: 500, SegmentCount: 4}}})
	clk.Advance(time.Second)
	if got := rec.kinds("mqtt"); !equal(got, "connected", "mqtt_progress{progress:100 version:1.0}") {
		t.Errorf("mqtt uplinks %q", got)
	}
	if got := rec.kinds("pcp"); !equal(got, "connected", "pcp_notify_response{result:3}") {
		t.Errorf("pcp uplinks %q", got)
	}
}
