package bench

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is what a bench run measured. The JSON keys are the ones scripts
// rely on (see the README's results page).
type Report struct {
	Devices  int            `json:"devices"`
	Mix      map[string]int `json:"mix"` // devices per protocol
	Cells    int            `json:"cells"`
	Coverage string         `json:"coverage"`
	// Coverages counts the LwM2M devices per coverage level.
	Coverages    map[string]int `json:"coverages,omitempty"`
	FailRate     float64        `json:"fail_rate"`
	PackageBytes int            `json:"package_bytes"`
	Tasks        []string       `json:"tasks"`

	Succeeded int `json:"succeeded"`
	Failed    int `json:"failed"`
	Stopped   int `json:"stopped"`
	// Retries is the tasks' retry_count; Retried counts the devices that
	// ran their upgrade more than once.
	Retries int `json:"retries"`
	Retried int `json:"retried"`
	// Failures counts the failed devices by failure reason;
	// FailuresByProtocol the same per protocol (mqtt, lwm2m, pcp).
	Failures           map[string]int            `json:"failures"`
	FailuresByProtocol map[string]map[string]int `json:"failures_by_protocol,omitempty"`
	// LostPCPExecutes counts, in a run with a restart, the PCP devices that
	// failed with T8 ("Waiting for device start to update timeout"): a 0x17
	// journaled but never sent before the kill is not sent again (a device
	// must never install twice), so the device waits out T8. They are
	// reported apart and are no problem of the run; --retries runs them
	// again.
	LostPCPExecutes int `json:"lost_pcp_executes,omitempty"`

	// WallSeconds runs from the first task's creation to the last device's
	// final state; UpgradesPerSecond is Succeeded over it.
	WallSeconds       float64 `json:"wall_seconds"`
	UpgradesPerSecond float64 `json:"upgrades_per_second"`
	// Per-device duration: from the sub-task's start (StartJob sent) to its
	// final state, over the devices that reached one.
	P50Seconds float64 `json:"p50_seconds"`
	P95Seconds float64 `json:"p95_seconds"`
	P99Seconds float64 `json:"p99_seconds"`
	MaxSeconds float64 `json:"max_seconds"`

	// The radio budget: the most units one cell held at any step, the
	// per-cell budget, and whether any cell went over it (the engine checks
	// the budget invariant at every cell step and counts violations).
	PeakCellUnits        int  `json:"peak_cell_units"`
	CellBudgetUnits      int  `json:"cell_budget_units"`
	CellBudgetViolations int  `json:"cell_budget_violations"`
	CellBudgetExceeded   bool `json:"cell_budget_exceeded"`

	// The server process(es): CPU over their whole lives and during the
	// task, the peak RSS, and the journal's events counted in the store
	// after the run.
	EngineCPUSeconds      float64 `json:"engine_cpu_seconds"`
	EngineTaskCPUSeconds  float64 `json:"engine_task_cpu_seconds"`
	EngineCPUPerUpgradeMs float64 `json:"engine_cpu_ms_per_upgrade"`
	EnginePeakRSSBytes    int64   `json:"engine_peak_rss_bytes"`
	EventsJournaled       int64   `json:"events_journaled"`
	EventsPerUpgrade      float64 `json:"events_per_upgrade"`
	// SyncedCommits counts the journal appends the server synced before
	// they returned (otafleet_journal_synced_appends_total, summed over
	// server lives; a killed server's last 200 ms are not seen), and
	// SyncedCommitsPerUpgrade divides them by the finished devices.
	SyncedCommits           int64   `json:"synced_commits"`
	SyncedCommitsPerUpgrade float64 `json:"synced_commits_per_upgrade"`
	// The PostgreSQL server's CPU during the task (its postmaster and
	// backends), when bench started it (--store postgres); absent with
	// Pebble, whose work is in the engine's figures.
	StoreTaskCPUSeconds  float64 `json:"store_task_cpu_seconds,omitempty"`
	StoreCPUPerUpgradeMs float64 `json:"store_cpu_ms_per_upgrade,omitempty"`
	// A cluster run (--nodes): each node's figures (the engine's above are
	// their sums; its peak RSS the highest), and etcd's CPU during the task
	// apart, as PostgreSQL's.
	Nodes               []NodeReport `json:"nodes,omitempty"`
	EtcdTaskCPUSeconds  float64      `json:"etcd_task_cpu_seconds,omitempty"`
	EtcdCPUPerUpgradeMs float64      `json:"etcd_cpu_ms_per_upgrade,omitempty"`
	// SingleNode is the same workload run first on one plain server (no
	// --cluster) over the same PostgreSQL server (a fresh database), and
	// ClusterCPURatio the cluster's engine CPU per upgrade over the single
	// node's (PostgreSQL's and etcd's CPU not included).
	SingleNode             *SingleNodeReport `json:"single_node,omitempty"`
	ClusterCPURatio        float64           `json:"cluster_cpu_ratio,omitempty"`
	IdleHeapBytesPerDevice float64           `json:"idle_heap_bytes_per_device"`
	IdleRSSBytesPerDevice  float64           `json:"idle_rss_bytes_per_device"`
	// IdleGoroutinesPerDevice is the server's goroutines the idle fleet
	// added, per device.
	IdleGoroutinesPerDevice float64 `json:"idle_goroutines_per_device"`
	RegisterConnectSeconds  float64 `json:"register_connect_seconds"`
	SimCPUSeconds           float64 `json:"sim_cpu_seconds"`
	SimPeakRSSBytes         int64   `json:"sim_peak_rss_bytes"`
	SimProcesses            int     `json:"sim_processes"`
	Restarts                int     `json:"restarts"`
	KilledAtFinal           int     `json:"killed_at_final,omitempty"`
	// KilledNode is the node --kill-node killed with SIGKILL (its node
	// address), at KilledAtFinal devices final.
	KilledNode               string `json:"killed_node,omitempty"`
	EveryDeviceOneFinalState bool   `json:"every_device_one_final_state"`
	DevicesUpgradedTwice     int    `json:"devices_upgraded_twice"`
	// Problems lists what went wrong (a device missing from the tasks, in
	// two final states, upgraded twice, a budget violation): empty on a
	// clean run.
	Problems []string `json:"problems"`

	Machine Machine `json:"machine"`
	Command string  `json:"command"`
	DataDir string  `json:"data_dir,omitempty"`
}

// NodeReport is one cluster node's figures: its API and node (cluster)
// addresses, its CPU during the task and per finished device of the
// whole fleet, its CPU over its whole life and its peak RSS.
type NodeReport struct {
	API             string  `json:"api"`
	NodeAddr        string  `json:"node_addr"`
	TaskCPUSeconds  float64 `json:"task_cpu_seconds"`
	CPUPerUpgradeMs float64 `json:"cpu_ms_per_upgrade"`
	CPUSeconds      float64 `json:"cpu_seconds"`
	PeakRSSBytes    int64   `json:"peak_rss_bytes"`
	// Killed: --kill-node killed this node (its figures end there).
	Killed bool `json:"killed,omitempty"`
}

// SingleNodeReport is the single-node run's figures beside a cluster run.
type SingleNodeReport struct {
	Succeeded             int     `json:"succeeded"`
	Failed                int     `json:"failed"`
	WallSeconds           float64 `json:"wall_seconds"`
	UpgradesPerSecond     float64 `json:"upgrades_per_second"`
	EngineTaskCPUSeconds  float64 `json:"engine_task_cpu_seconds"`
	EngineCPUPerUpgradeMs float64 `json:"engine_cpu_ms_per_upgrade"`
	EnginePeakRSSBytes    int64   `json:"engine_peak_rss_bytes"`
	StoreCPUPerUpgradeMs  float64 `json:"store_cpu_ms_per_upgrade"`
}

// Single returns the figures of r, a single-node run, for a cluster run's
// report.
func (r *Report) Single() *SingleNodeReport {
	return &SingleNodeReport{
		Succeeded: r.Succeeded, Failed: r.Failed, WallSeconds: r.WallSeconds, UpgradesPerSecond: r.UpgradesPerSecond,
		EngineTaskCPUSeconds: r.EngineTaskCPUSeconds, EngineCPUPerUpgradeMs: r.EngineCPUPerUpgradeMs,
		EnginePeakRSSBytes: r.EnginePeakRSSBytes, StoreCPUPerUpgradeMs: r.StoreCPUPerUpgradeMs,
	}
}

// Machine describes where the run happened.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model,omitempty"`
	OS        string `json:"os"`
	GoVersion string `json:"go_version"`
}

// OK reports whether the run found no problem.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

// percentile returns the p-th percentile (0..100) of sorted durations by
// the nearest-rank method.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	k := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(k, 0), len(sorted)-1)]
}

func (r *Report) setDurations(ds []time.Duration) {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	r.P50Seconds = percentile(ds, 50).Seconds()
	r.P95Seconds = percentile(ds, 95).Seconds()
	r.P99Seconds = percentile(ds, 99).Seconds()
	if len(ds) > 0 {
		r.MaxSeconds = ds[len(ds)-1].Seconds()
	}
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func counts(m map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// Write prints the human report.
func (r *Report) Write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	p := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, a...)...) }
	fmt.Fprintln(tw, "otafleet bench")
	p("command", "%s", r.Command)
	p("machine", "%d CPUs %s, %s, %s", r.Machine.CPUs, r.Machine.CPUModel, r.Machine.OS, r.Machine.GoVersion)
	p("devices", "%d (%s) in %d cells, coverage %s (%s), fail rate %.3g", r.Devices, counts(r.Mix), r.Cells, r.Coverage, counts(r.Coverages), r.FailRate)
	if len(r.Tasks) == 0 {
		p("tasks", "none run (--idle-only)")
		r.writeFleet(p)
		p("engine", "%.2f s CPU, peak RSS %s", r.EngineCPUSeconds, mib(r.EnginePeakRSSBytes))
		p("journal", "%d events", r.EventsJournaled)
	} else {
		r.writeTasks(p)
	}
	if r.DataDir != "" {
		p("data dir", "%s", r.DataDir)
	}
	r.writeResult(p)
	return tw.Flush()
}

// writeTasks prints the lines of a run with tasks.
func (r *Report) writeTasks(p func(k, format string, a ...any)) {
	p("package", "%d bytes; tasks %s", r.PackageBytes, strings.Join(r.Tasks, " "))
	p("outcome", "%d succeeded, %d failed, %d stopped", r.Succeeded, r.Failed, r.Stopped)
	if r.Retries > 0 {
		p("retries", "%d per device, a minute after a failure; devices that ran more than once: %d", r.Retries, r.Retried)
	}
	for _, k := range slices.Sorted(maps.Keys(r.Failures)) {
		by := map[string]int{}
		for proto, m := range r.FailuresByProtocol {
			if m[k] > 0 {
				by[proto] = m[k]
			}
		}
		p("  failed", "%d × %s (%s)", r.Failures[k], k, counts(by))
	}
	if r.LostPCPExecutes > 0 {
		p("  lost 0x17", "%d PCP devices waited out T8: their 0x17 died with the killed server and is never sent twice", r.LostPCPExecutes)
	}
	p("wall time", "%.2f s (task start to last final state)", r.WallSeconds)
	p("upgrades/s", "%.1f", r.UpgradesPerSecond)
	p("per device", "p50 %.2f s, p95 %.2f s, p99 %.2f s, max %.2f s (sub-task start to final state)", r.P50Seconds, r.P95Seconds, r.P99Seconds, r.MaxSeconds)
	exceeded := "never exceeded"
	if r.CellBudgetExceeded {
		exceeded = fmt.Sprintf("EXCEEDED (%d violations)", r.CellBudgetViolations)
	}
	p("cell budget", "peak %d of %d units in one cell: %s", r.PeakCellUnits, r.CellBudgetUnits, exceeded)
	p("engine CPU", "%.2f s in all, %.2f s during the task: %.2f ms per finished device", r.EngineCPUSeconds, r.EngineTaskCPUSeconds, r.EngineCPUPerUpgradeMs)
	if r.StoreTaskCPUSeconds > 0 {
		p("PostgreSQL CPU", "%.2f s during the task: %.2f ms per finished device", r.StoreTaskCPUSeconds, r.StoreCPUPerUpgradeMs)
	}
	if r.EtcdTaskCPUSeconds > 0 {
		p("etcd CPU", "%.2f s during the task: %.2f ms per finished device", r.EtcdTaskCPUSeconds, r.EtcdCPUPerUpgradeMs)
	}
	p("engine RSS", "peak %s", mib(r.EnginePeakRSSBytes))
	for k, n := range r.Nodes {
		killed := ""
		if n.Killed {
			killed = " (killed)"
		}
		p(fmt.Sprintf("  node %d", k), "%s (API %s)%s: %.2f s CPU during the task (%.2f ms per finished device), %.2f s in all, peak RSS %s",
			n.NodeAddr, n.API, killed, n.TaskCPUSeconds, n.CPUPerUpgradeMs, n.CPUSeconds, mib(n.PeakRSSBytes))
	}
	if s := r.SingleNode; s != nil {
		p("single node", "same workload, one plain server on the same PostgreSQL first: %d succeeded, %d failed in %.2f s (%.1f upgrades/s); engine %.2f ms per finished device, PostgreSQL %.2f ms, peak RSS %s",
			s.Succeeded, s.Failed, s.WallSeconds, s.UpgradesPerSecond, s.EngineCPUPerUpgradeMs, s.StoreCPUPerUpgradeMs, mib(s.EnginePeakRSSBytes))
		p("cluster/single", "%.2f× the engine CPU per finished device (%d nodes' sum over one node's)", r.ClusterCPURatio, len(r.Nodes))
	}
	p("journal", "%d events (%.1f per finished device); %d synced commits (%.1f per finished device)", r.EventsJournaled, r.EventsPerUpgrade, r.SyncedCommits, r.SyncedCommitsPerUpgrade)
	r.writeFleet(p)
	if r.KilledNode != "" {
		p("node killed", "%s with SIGKILL at %d devices final; the others went on", r.KilledNode, r.KilledAtFinal)
	}
	if r.Restarts > 0 {
		p("restarts", "%d (SIGKILL at %d devices final)", r.Restarts, r.KilledAtFinal)
	}
	p("final states", "every device exactly once: %v; upgraded twice: %d", r.EveryDeviceOneFinalState, r.DevicesUpgradedTwice)
}

// writeFleet prints the idle fleet's and the simulators' lines.
func (r *Report) writeFleet(p func(k, format string, a ...any)) {
	p("idle fleet", "%.0f B heap, %.0f B RSS and %.3f goroutines per registered, connected device", r.IdleHeapBytesPerDevice, r.IdleRSSBytesPerDevice, r.IdleGoroutinesPerDevice)
	p("register+connect", "%.2f s", r.RegisterConnectSeconds)
	p("simulator", "%d processes, %.2f s CPU, peak RSS %s", r.SimProcesses, r.SimCPUSeconds, mib(r.SimPeakRSSBytes))
}

func (r *Report) writeResult(p func(k, format string, a ...any)) {
	if len(r.Problems) == 0 {
		p("result", "OK")
		return
	}
	for _, pr := range r.Problems {
		p("PROBLEM", "%s", pr)
	}
}
