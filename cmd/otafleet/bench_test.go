package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
)

// TestBenchKillAt runs `otafleet bench` as a user would: the server and the
// simulator are child processes (this test binary re-executed as otafleet),
// 60 MQTT devices over real sockets, the server killed with SIGKILL once
// half of them are final and started again. The report must show every
// device succeeded, each in exactly one final state, none upgraded twice.
// --cpu-profile writes the servers' CPU profile of the run, engine frames in
// it, across the kill.
func TestBenchKillAt(t *testing.T) { testBenchKillAt(t, false) }

// TestBenchKillAtPostgres is TestBenchKillAt with --store postgres: bench
// starts a private PostgreSQL for the server, and the report counts its
// events and its CPU. Without --cpu-profile: with the journal's work in
// PostgreSQL, the engine's process of this small run is sampled a handful
// of times (6 samples, none in the engine, in one run of six).
func TestBenchKillAtPostgres(t *testing.T) { testBenchKillAt(t, true) }

func testBenchKillAt(t *testing.T, postgres bool) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	t.Setenv("OTAFLEET_TEST_MAIN", "1") // the children run main()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	profPath := filepath.Join(t.TempDir(), "cpu.pprof")
	args := []string{"bench", "--devices", "60", "--protocol", "mqtt", "--think-time", "3s",
		"--kill-at", "50%", "--json", "--timeout", "3m"}
	if postgres {
		args = append(args, "--store", "postgres")
	} else {
		args = append(args, "--cpu-profile", profPath)
	}
	code := run(ctx, args, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out.String(), errb.String())
	}
	var rep struct {
		Devices, Succeeded, Failed, Restarts int
		Retries                              int     `json:"retries"`
		Exceeded                             bool    `json:"cell_budget_exceeded"`
		OneFinal                             bool    `json:"every_device_one_final_state"`
		Twice                                int     `json:"devices_upgraded_twice"`
		Events                               int     `json:"events_journaled"`
		CPU                                  float64 `json:"engine_cpu_seconds"`
		StoreCPU                             float64 `json:"store_task_cpu_seconds"`
		RSS                                  int64   `json:"engine_peak_rss_bytes"`
		Killed                               int     `json:"killed_at_final"`
		P50                                  float64 `json:"p50_seconds"`
		Problems                             []string
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	// --kill-at gives the tasks one retry unless --retries says otherwise.
	if rep.Devices != 60 || rep.Succeeded != 60 || rep.Failed != 0 || rep.Restarts != 1 || rep.Retries != 1 || !rep.OneFinal || rep.Twice != 0 ||
		rep.Exceeded || len(rep.Problems) != 0 || rep.Killed < 30 || rep.Killed >= 60 {
		t.Fatalf("report: %+v\n%s", rep, out.String())
	}
	// Every figure was measured, not defaulted.
	if rep.Events < 60*10 || rep.CPU <= 0 || rep.RSS <= 0 || rep.P50 <= 0 || (rep.StoreCPU > 0) != postgres {
		t.Fatalf("figures: %+v", rep)
	}
	if postgres {
		return
	}
	f, err := os.Open(profPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	prof, err := profile.Parse(f)
	if err != nil {
		t.Fatalf("--cpu-profile: %v", err)
	}
	engine := false
	for _, fn := range prof.Function {
		engine = engine || strings.HasPrefix(fn.Name, "github.com/otafleet/otafleet/actors.")
	}
	if len(prof.Sample) == 0 || !engine || prof.DurationNanos < int64(2*time.Second) {
		t.Fatalf("--cpu-profile: %d samples over %v, engine frames %v", len(prof.Sample), time.Duration(prof.DurationNanos), engine)
	}
}

// TestBenchRetriesRange: a retry count the API would refuse is refused
// before anything starts.
func TestBenchRetriesRange(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"bench", "--retries", "6"}, &out, &errb); code == 0 || !bytes.Contains(errb.Bytes(), []byte("--retries 6: want 0 to 5")) {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out.String(), errb.String())
	}
}

// TestBenchNodes runs `otafleet bench --nodes 2` as a user would: bench
// starts PostgreSQL and etcd, runs 60 mixed devices on one plain server,
// then on two `serve --cluster` nodes (child processes: this test binary
// re-executed as otafleet) whose addresses the simulator is given. The
// report must show both runs clean, each node's CPU and RSS measured, the
// engine's task CPU their sum, etcd's and PostgreSQL's apart, and the ratio
// of the cluster's CPU per upgrade to the single node's.
func TestBenchNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	t.Setenv("OTAFLEET_TEST_MAIN", "1") // the children run main()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	code := run(ctx, []string{"bench", "--nodes", "2", "--devices", "60", "--json", "--timeout", "2m"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out.String(), errb.String())
	}
	var rep struct {
		Devices, Succeeded, Failed int
		OneFinal                   bool    `json:"every_device_one_final_state"`
		Twice                      int     `json:"devices_upgraded_twice"`
		TaskCPU                    float64 `json:"engine_task_cpu_seconds"`
		CPUPerUpgrade              float64 `json:"engine_cpu_ms_per_upgrade"`
		StoreCPU                   float64 `json:"store_task_cpu_seconds"`
		Ratio                      float64 `json:"cluster_cpu_ratio"`
		Nodes                      []struct {
			API      string  `json:"api"`
			NodeAddr string  `json:"node_addr"`
			TaskCPU  float64 `json:"task_cpu_seconds"`
			CPU      float64 `json:"cpu_seconds"`
			RSS      int64   `json:"peak_rss_bytes"`
		}
		Single *struct {
			Succeeded     int     `json:"succeeded"`
			CPUPerUpgrade float64 `json:"engine_cpu_ms_per_upgrade"`
		} `json:"single_node"`
		Problems []string
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if rep.Devices != 60 || rep.Succeeded != 60 || rep.Failed != 0 || !rep.OneFinal || rep.Twice != 0 || len(rep.Problems) != 0 ||
		rep.Single == nil || rep.Single.Succeeded != 60 || len(rep.Nodes) != 2 {
		t.Fatalf("report: %+v\n%s", rep, out.String())
	}
	sum := 0.0
	for _, n := range rep.Nodes {
		if n.API == "" || n.NodeAddr == "" || n.CPU <= 0 || n.RSS <= 0 || n.TaskCPU > n.CPU {
			t.Errorf("node figures: %+v", n)
		}
		sum += n.TaskCPU
	}
	if d := rep.TaskCPU - sum; d > 1e-6 || d < -1e-6 {
		t.Errorf("engine task CPU %v, the nodes' sum %v", rep.TaskCPU, sum)
	}
	if rep.StoreCPU <= 0 || rep.Single.CPUPerUpgrade <= 0 || rep.CPUPerUpgrade <= 0 {
		t.Errorf("figures: %+v", rep)
	}
	if want := rep.CPUPerUpgrade / rep.Single.CPUPerUpgrade; rep.Ratio < want*0.999 || rep.Ratio > want*1.001 {
		t.Errorf("cluster_cpu_ratio %v, want %v", rep.Ratio, want)
	}
}

// TestBenchNodesUsage: --nodes and --kill-node combinations that cannot
// run are usage errors (exit 2) before anything starts.
func TestBenchNodesUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--nodes", "0"}, "--nodes 0: want at least 1"},
		{[]string{"--nodes", "2", "--store", "pebble"}, "--nodes runs the cluster on PostgreSQL"},
		{[]string{"--nodes", "2", "--kill-at", "50%"}, "--kill-at restarts a single server: not with --nodes"},
		{[]string{"--kill-node", "50%"}, "--kill-node needs --nodes 2 or more"},
		{[]string{"--nodes", "1", "--kill-node", "50%"}, "--kill-node needs --nodes 2 or more"},
		{[]string{"--nodes", "3", "--kill-node", "100%"}, `--kill-node "100%": want a share`},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), append([]string{"bench"}, tc.args...), &out, &errb)
		if code != exitUsage || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("bench %v: exit %d, stderr %q; want exit %d and %q", tc.args, code, errb.String(), exitUsage, tc.want)
		}
	}
}
