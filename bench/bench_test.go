package bench

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

func TestFleetIsDeterministicAndSpread(t *testing.T) {
	f := Fleet{Protocols: Mix, Devices: 30000, Prefix: "sim-", Cells: 200, Coverage: CoverageMixed, FailRate: 0.1, SecretSeed: "s"}
	if err := f.Validate(); err != nil {
		t.Fatal(err)
	}
	cells := map[int64]map[string]int{}
	cov := map[string]int{}
	protos := map[string]int{}
	fails := 0
	for n := range f.Devices {
		d := f.Device(n)
		if e := f.Device(n); d.ID != e.ID || d.Secret != e.Secret || d.Coverage != e.Coverage || d.Fail != e.Fail {
			t.Fatal("not deterministic")
		}
		if d.ID != "sim-"+itoa(n) {
			t.Fatalf("device %d is %q", n, d.ID)
		}
		protos[d.Protocol]++
		if d.Fail {
			fails++
			if d.Code == 0 || (d.Protocol == ProtoPCP && d.FailAt == 0) {
				t.Fatalf("%s fails without a code: %+v", d.ID, d)
			}
		}
		if d.Protocol == ProtoMQTT {
			if d.Cell != 0 || d.Coverage != "" {
				t.Fatalf("MQTT device with radio: %+v", d)
			}
			continue
		}
		if d.Cell < 1 || d.Cell > 200 {
			t.Fatalf("cell %d", d.Cell)
		}
		if cells[d.Cell] == nil {
			cells[d.Cell] = map[string]int{}
		}
		cells[d.Cell][d.Protocol]++
		cov[d.Coverage]++
	}
	if protos[ProtoMQTT] != 10000 || protos[ProtoLwM2M] != 10000 || protos[ProtoPCP] != 10000 {
		t.Fatalf("mix %v", protos)
	}
	if len(cells) != 200 {
		t.Fatalf("%d cells used", len(cells))
	}
	for c, m := range cells {
		if m[ProtoLwM2M] != 50 || m[ProtoPCP] != 50 {
			t.Fatalf("cell %d has %v: want 50 of each LwM2M flow", c, m)
		}
	}
	near := func(got, want, tol float64) bool { return math.Abs(got-want) <= tol }
	lw := float64(protos[ProtoLwM2M] + protos[ProtoPCP])
	if !near(float64(cov[CoverageGood])/lw, 0.75, 0.02) || !near(float64(cov[CoverageMedium])/lw, 0.20, 0.02) || !near(float64(cov[CoveragePoor])/lw, 0.05, 0.01) {
		t.Fatalf("coverage %v", cov)
	}
	if !near(float64(fails)/30000, 0.1, 0.01) {
		t.Fatalf("%d failing devices of 30000", fails)
	}
	// The secrets derive from the seed and the ID only.
	g := f
	g.First, g.Devices = 100, 5
	if f.Device(101).Secret != g.Device(101).Secret || string(f.Device(101).PSK) != string(g.Device(101).PSK) {
		t.Fatal("a device's secret depends on the fleet's range")
	}
	g.SecretSeed = "other"
	if f.Device(101).Secret == g.Device(101).Secret {
		t.Fatal("the seed does not change the secret")
	}
	if ids := (Fleet{Protocols: Mix, Devices: 7, First: 3, Prefix: "x"}).IDs(ProtoPCP); strings.Join(ids, ",") != "x5,x8" {
		t.Fatalf("IDs %v", ids)
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestFleetValidate(t *testing.T) {
	good := Fleet{Protocols: []string{ProtoMQTT}, Devices: 1, Prefix: "p", Cells: 1, Coverage: CoverageGood}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(*Fleet){
		"no devices": func(f *Fleet) { f.Devices = 0 },
		"negative":   func(f *Fleet) { f.First = -1 },
		"prefix":     func(f *Fleet) { f.Prefix = "a/b" },
		"cells":      func(f *Fleet) { f.Cells = 0 },
		"coverage":   func(f *Fleet) { f.Coverage = "great" },
		"fail rate":  func(f *Fleet) { f.FailRate = 1.5 },
		"NaN":        func(f *Fleet) { f.FailRate = math.NaN() },
		"protocol":   func(f *Fleet) { f.Protocols = nil },
	} {
		bad := good
		f(&bad)
		if bad.Validate() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := Protocols("coap"); err == nil {
		t.Error("protocol coap accepted")
	}
}

func TestPercentiles(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Second)
	}
	var r Report
	r.setDurations(ds)
	if r.P50Seconds != 50 || r.P95Seconds != 95 || r.P99Seconds != 99 || r.MaxSeconds != 100 {
		t.Fatalf("%+v", r)
	}
	r = Report{}
	r.setDurations(nil)
	if r.P50Seconds != 0 {
		t.Fatal(r.P50Seconds)
	}
}

// TestReportKeys pins the JSON keys scripts read (issue 7).
func TestReportKeys(t *testing.T) {
	b, err := json.Marshal(&Report{Failures: map[string]int{}})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"devices", "succeeded", "failed", "wall_seconds", "upgrades_per_second", "p50_seconds",
		"p95_seconds", "p99_seconds", "peak_cell_units", "cell_budget_units", "cell_budget_exceeded", "engine_cpu_seconds",
		"engine_peak_rss_bytes", "events_journaled", "synced_commits_per_upgrade", "failures", "restarts"} {
		if _, ok := m[k]; !ok {
			t.Errorf("no %q in %s", k, b)
		}
	}
	if _, ok := m["cell_budget_exceeded"].(bool); !ok {
		t.Error("cell_budget_exceeded is not a boolean")
	}
}

// TestReportFailuresByProtocol: the human report names the protocols of
// each failure reason, and the PCP devices whose 0x17 died with a killed
// server apart.
func TestReportFailuresByProtocol(t *testing.T) {
	t8 := "Waiting for device start to update timeout"
	r := &Report{Tasks: []string{"t"}, Failed: 6, Failures: map[string]int{t8: 6},
		FailuresByProtocol: map[string]map[string]int{ProtoPCP: {t8: 5}, ProtoLwM2M: {t8: 1}}, LostPCPExecutes: 5, Restarts: 1}
	var b strings.Builder
	if err := r.Write(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"6 × " + t8 + " (lwm2m 1, pcp 5)", "lost 0x17", "5 PCP devices waited out T8"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("no %q in\n%s", want, b.String())
		}
	}
}

func TestLoopbackAddrs(t *testing.T) {
	if got := LoopbackAddrs("127.0.0.1:5683", 3); strings.Join(got, " ") != "127.0.0.1 127.0.0.2 127.0.0.3" {
		t.Fatal(got)
	}
	if got := LoopbackAddrs("10.0.0.1:5683", 3); got != nil {
		t.Fatal(got)
	}
}
