package memtransport_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
)

// reopen builds a new Transport on the same state file, as a restarted
// simulator does, and adds specs again.
func reopen(t *testing.T, path string, specs ...memtransport.DeviceSpec) (*recorder, *memtransport.Transport, *clocktest.Clock) {
	t.Helper()
	clk := clocktest.New(start.Add(time.Hour))
	rec := &recorder{}
	tr, err := memtransport.New(memtransport.Config{StateFile: path}, clk, rec, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	for _, s := range specs {
		if err := tr.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	return rec, tr, clk
}

// TestStateFileReload: a restarted simulator remembers versions, completed
// upgrades, Executes and consumed fault counts.
func TestStateFileReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sim-state")
	w := newWorld(t, memtransport.Config{StateFile: path})
	var specs []memtransport.DeviceSpec
	for _, p := range protocols {
		s := spec(short(p), p)
		s.Behaviour.FailDownloads = 1
		specs = append(specs, s)
		w.add(s)
		w.connect(s.ID)
		w.eng.start(s.ID, job(p, "task", 1, "2.0"))
		checkOutcome(t, w.runUntilOutcome(s.ID, time.Hour), fail, map[messages.Protocol]messages.Reason{
			messages.Protocol_PROTOCOL_MQTT:       messages.Reason_REASON_PACKAGE_VERIFICATION_FAILED,
			messages.Protocol_PROTOCOL_LWM2M_FOTA: messages.Reason_REASON_FW_INTEGRITY_CHECK,
			messages.Protocol_PROTOCOL_LWM2M_PCP:  messages.Reason_REASON_PACKAGE_VERIFICATION_FAILED,
		}[p])
		w.eng.start(s.ID, job(p, "task", 2, "2.0"))
		checkOutcome(t, w.runUntilOutcome(s.ID, time.Hour), success, none)
	}
	before := map[string]memtransport.DeviceState{}
	for _, s := range specs {
		before[s.ID] = mustDevice(t, w.tr, s.ID)
	}
	if err := w.tr.Close(); err != nil {
		t.Fatal(err)
	}

	_, tr, _ := reopen(t, path, specs...)
	for _, s := range specs {
		got, was := mustDevice(t, tr, s.ID), before[s.ID]
		if version(got) != "2.0" || got.Online {
			t.Errorf("%s after reload: version %q, online %v", s.ID, version(got), got.Online)
		}
		g, b := got.Counters, was.Counters
		if g.Upgrades != 1 || g.Executes != b.Executes || g.PCPExecutes != b.PCPExecutes ||
			g.UpgradeEvents != b.UpgradeEvents || g.URIWrites != b.URIWrites || g.Downloads != 2 {
			t.Errorf("%s durable counters after reload %+v, before %+v", s.ID, g, b)
		}
	}
	if s := tr.Stats(); s.Upgrades != 3 || s.Executes != 1 || s.PCPExecutes != 1 {
		t.Errorf("Stats after reload %+v", s)
	}
}

// TestStateFileInstallInProgress: the simulator dies between accepting an
// Execute and finishing the install; after the restart the install is done,
// and a re-observation reports Update Result 1 (FOTA) or the device repeats
// its 0x18 (PCP).
func TestStateFileInstallInProgress(t *testing.T) {
	for _, p := range protocols[1:] {
		t.Run(short(p), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "sim-state")
			w := newWorld(t, memtransport.Config{StateFile: path})
			s := spec("d1", p)
			w.add(s)
			w.connect("d1")
			w.eng.start("d1", job(p, "task", 1, "2.0"))
			for i := 0; ; i++ {
				if c := mustDevice(t, w.tr, "d1").Counters; c.Executes+c.PCPExecutes == 1 {
					break
				}
				if i > 1000 {
					t.Fatal("no Execute")
				}
				w.clk.Advance(10 * time.Millisecond)
			}
			if ds := mustDevice(t, w.tr, "d1"); ds.Installing != "2.0" {
				t.Fatalf("installing %q", ds.Installing)
			}
			w.tr.Close() // kill -9: nothing more happens

			rec, tr, clk := reopen(t, path)
			if err := tr.Add(s); err != nil {
				t.Fatal(err)
			}
			ds := mustDevice(t, tr, "d1")
			if version(ds) != "2.0" || ds.Installing != "" || ds.Counters.Upgrades != 1 || ds.Counters.Executes+ds.Counters.PCPExecutes != 1 {
				t.Fatalf("after reload: %+v", ds)
			}
			connect(t, tr, "d1")
			if p == messages.Protocol_PROTOCOL_LWM2M_FOTA {
				send(t, tr, observe("d1", "/5/0/3"))
				send(t, tr, observe("d1", "/5/0/5"))
				clk.Advance(time.Second)
				check(t, rec, "d1", "connected", "fota_status{state:0}", "fota_status{update_result:1}")
			} else {
				send(t, tr, observe("d1", "/19/0/0"))
				clk.Advance(time.Second)
				check(t, rec, "d1", "connected", "pcp_upgrade_result{version:2.0}")
			}
		})
	}
}

// TestStateFileTornAndCorrupt: a torn last line is tolerated; damage
// elsewhere makes New fail with ErrCorruptState, naming the line.
func TestStateFileTornAndCorrupt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sim-state")
	_, tr, clk := reopen(t, path, spec("a", messages.Protocol_PROTOCOL_MQTT))
	connect(t, tr, "a")
	send(t, tr, &messages.Downlink{DeviceId: "a", Kind: &messages.Downlink_MqttUpgrade{MqttUpgrade: &messages.MqttUpgrade{Job: job(messages.Protocol_PROTOCOL_MQTT, "t", 1, "2.0")}}})
	clk.Advance(time.Minute)
	tr.Close()

	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`0badc0de {"id":"a","fw":"9.`); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, tr, _ = reopen(t, path, spec("a", messages.Protocol_PROTOCOL_MQTT))
	if ds := mustDevice(t, tr, "a"); ds.FwVersion != "2.0" || ds.Counters.Upgrades != 1 {
		t.Fatalf("after a torn write: %+v", ds)
	}
	tr.Close()

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(data), "\n")
	lines[1] = "ffffffff" + lines[1][8:] // damage the first record
	if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = memtransport.New(memtransport.Config{StateFile: path}, clocktest.New(start), &recorder{}, nil)
	if !errors.Is(err, memtransport.ErrCorruptState) || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("New on a corrupt file: %v", err)
	}
}

// TestStateFilePCPDownloaded: the simulator dies after a PCP device reported
// its package downloaded (0x16) and before any 0x17. The package survives
// the restart, as on a real device: observed again, the device repeats its
// 0x16, and a 0x17 then installs it (the 0x17 a restarted server sends when
// it had one due and never sent).
func TestStateFilePCPDownloaded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sim-state")
	s := spec("p", messages.Protocol_PROTOCOL_LWM2M_PCP)
	rec, tr, clk := reopen(t, path, s)
	connect(t, tr, "p")
	send(t, tr, observe("p", "/19/0/0"))
	send(t, tr, pcpDL("p", &messages.PcpNotifyNewVersion{Version: "2.0", SegmentSize: 100, SegmentCount: 1}))
	clk.Advance(time.Second)
	check(t, rec, "p", "connected", "pcp_notify_response", "pcp_segment_request{version:2.0}")
	send(t, tr, pcpDL("p", &messages.PcpSegmentResponse{SegmentNo: 0, PackageId: "x", SegmentSize: 100}))
	clk.Advance(time.Second)
	check(t, rec, "p", "pcp_download_result")
	tr.Close() // kill -9 before the acknowledgement and the 0x17

	rec, tr, clk = reopen(t, path, s)
	connect(t, tr, "p")
	send(t, tr, observe("p", "/19/0/0"))
	clk.Advance(time.Second)
	check(t, rec, "p", "connected", "pcp_download_result")
	send(t, tr, pcpDL("p", &messages.PcpExecute{}))
	clk.Advance(time.Minute)
	check(t, rec, "p", "pcp_execute_response", "pcp_upgrade_result{version:2.0}")
	if ds := mustDevice(t, tr, "p"); version(ds) != "2.0" || ds.Counters.PCPExecutes != 1 || ds.Counters.Upgrades != 1 {
		t.Errorf("after the 0x17: version %q, counters %+v", version(ds), ds.Counters)
	}
}
