package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/otafleet/otafleet/bench"
	"github.com/otafleet/otafleet/internal/etcdserver"
	"github.com/otafleet/otafleet/internal/pgserver"
)

// scales are the --scale profiles: flags given explicitly win.
var scales = map[string]bench.Options{
	"small": {Devices: 1000, Protocol: bench.ProtoMixed, Cells: 20, Coverage: bench.CoverageMixed, PackageBytes: 16 << 10},
	// large runs its 100,000 devices in 7 simulator processes (14,286 devices
	// and about 18,000 open files each: 20,000 is the hard limit here), and its
	// server starts at most 1,000 devices per task at once (4,000 in all). On
	// a 2-core machine the CPU, not the radio budget, is the bottleneck: with
	// 30,000 devices downloading at once, more datagrams waited for the
	// server than its 4 MiB socket buffer holds, and devices whose State 1
	// notification was dropped at every retransmission failed T5 ("Waiting
	// for device start download package timeout").
	"large": {Devices: 100000, Protocol: bench.ProtoLwM2M, Cells: 2000, Coverage: bench.CoverageMixed, PackageBytes: 16 << 10, Timeout: 3 * time.Hour,
		SimProcs: 7, ServeArgs: []string{"--task-max-in-flight=1000"}},
}

// parseShare reads "50%" or "0.5".
func parseShare(s string) (float64, error) {
	if s == "" {
		return 0, nil
	}
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(p, 64)
		return v / 100, err
	}
	return strconv.ParseFloat(s, 64)
}

func benchCommand(stdout, stderr io.Writer) *cobra.Command {
	o := bench.Options{Devices: 1000, Protocol: bench.ProtoMixed, Cells: 20, Coverage: bench.CoverageMixed, PackageBytes: 16 << 10, Timeout: 30 * time.Minute}
	var (
		scale, killAt, store string
		killNode             string
		asJSON               bool
		serveArgs            []string
		nodes                int
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure an upgrade campaign: a server and simulated devices as separate processes, and a report",
		Long: `bench starts a server (embedded defaults, a fresh data folder) and one simulator
process per 5,000 devices, registers the fleet, uploads a package per protocol,
runs one task per protocol (per 30,000 devices) to its end and prints a report:
wall time, upgrades per second, per-device duration percentiles, the busiest
cell beside its budget, the server's CPU and peak RSS, events journaled and
synced journal commits (synced_commits_per_upgrade: the server's synced
appends per finished device), failures by reason. --json prints one JSON
object instead.

--store postgres runs the server on a private PostgreSQL that bench starts
(and removes) for the run; the report adds that server's CPU during the task
(store_cpu_ms_per_upgrade), as the store's work is no longer in the engine's.

--nodes N runs the workload twice on one private PostgreSQL server (implied:
--store postgres; --store pebble is refused) and a private etcd that bench
starts: first on one plain server (no --cluster) over a fresh database, then
on a cluster of N ` + "`serve --cluster`" + ` nodes over another; the simulators get
every node's addresses (each device starts on the node its ID hashes to and
fails over to the others) and bench's API client talks to the first node. The
report is the cluster run's, its engine figures summed over the nodes, plus
each node's CPU during the task and peak RSS (nodes), etcd's CPU apart
(etcd_cpu_ms_per_upgrade, as PostgreSQL's), the single node's figures
(single_node) and cluster_cpu_ratio: the cluster's engine CPU per finished
device over the single node's (PostgreSQL's and etcd's not included).
--kill-node 50% (with --nodes 2 or more) kills the last node with SIGKILL
once half the devices are final; the others go on, and the report checks
that every device ends in exactly one final state and none upgraded twice.
Devices whose step died with the node may fail: they are counted, not a
problem of the run, and their tasks get one retry (--retries 1) unless
--retries says otherwise.

--kill-at 50% kills the server with SIGKILL once half the devices reached a
final state, starts it again on the same data and ports, and checks that every
device still ends in exactly one final state and none upgraded twice. Its tasks
get one retry (--retries 1) unless --retries says otherwise: an Execute (FOTA
/5/0/2, PCP 0x17) journaled but not yet sent at the kill is never sent again,
as a device must never install twice, so that device waits out T8 (3 min) and
its retry runs the upgrade again. With --fail-rate 0 any failed device is a
problem of the run.

Profiles: --scale small (1,000 mixed devices in 20 cells, under a minute) and
--scale large (100,000 LwM2M devices in 2,000 cells, 7 simulator processes,
the server started with --task-max-in-flight=1000). Flags given explicitly
override the profile. The exit code is 0 for a clean run, 1 when the report
lists problems.

engine_cpu_ms_per_upgrade has a yardstick in the source tree: the same
exchanges on the bare libraries, measured side by side with otafleet in one
benchmark run. For PCP (go-coap's UDP server doing a PCP upgrade's exchanges,
beside the engine on Pebble and the LwM2M server):
  go test ./transport/lwm2m -run '^$' -bench PCPUpgrades -benchtime 1x -count 3
reports otafleet-cpu-µs/upgrade, bare-cpu-µs/upgrade and their difference
(over-bare-µs/upgrade) at 1, 16 and 128 KiB.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if scale != "" {
				p, ok := scales[scale]
				if !ok {
					return usage("--scale %q: want small or large", scale)
				}
				ch := cmd.Flags().Changed
				if !ch("devices") {
					o.Devices = p.Devices
				}
				if !ch("protocol") {
					o.Protocol = p.Protocol
				}
				if !ch("cells") {
					o.Cells = p.Cells
				}
				if !ch("coverage") {
					o.Coverage = p.Coverage
				}
				if !ch("package-size") {
					o.PackageBytes = p.PackageBytes
				}
				if !ch("timeout") && p.Timeout > 0 {
					o.Timeout = p.Timeout
				}
				if !ch("sim-procs") && p.SimProcs > 0 {
					o.SimProcs = p.SimProcs
				}
			}
			var err error
			if o.KillAt, err = parseShare(killAt); err != nil || o.KillAt < 0 || o.KillAt >= 1 {
				return usage("--kill-at %q: want a share such as 50%% or 0.5, below 100%%", killAt)
			}
			if o.KillNode, err = parseShare(killNode); err != nil || o.KillNode < 0 || o.KillNode >= 1 {
				return usage("--kill-node %q: want a share such as 50%% or 0.5, below 100%%", killNode)
			}
			if o.KillNode > 0 && nodes < 2 {
				return usage("--kill-node needs --nodes 2 or more: a node must survive")
			}
			if (o.KillAt > 0 || o.KillNode > 0) && !cmd.Flags().Changed("retries") {
				o.Retries = 1
			}
			if o.Exe, err = os.Executable(); err != nil {
				return err
			}
			if scale != "" {
				o.ServeArgs = append(slices.Clone(scales[scale].ServeArgs), serveArgs...) // given ones last: they win
			} else {
				o.ServeArgs = serveArgs
			}
			if cmd.Flags().Changed("nodes") {
				if nodes < 1 {
					return usage("--nodes %d: want at least 1", nodes)
				}
				if cmd.Flags().Changed("store") && store != "postgres" {
					return usage("--nodes runs the cluster on PostgreSQL: --store %q cannot go with it", store)
				}
				if o.KillAt > 0 {
					return usage("--kill-at restarts a single server: not with --nodes")
				}
				store = "postgres" // implied
			}
			switch store {
			case "", "pebble", "postgres":
			default:
				return usage("--store %q: want pebble or postgres", store)
			}
			o.Command = "otafleet " + strings.Join(os.Args[1:], " ")
			o.Progress = stderr // progress lines; the report goes to stdout
			var rep *bench.Report
			switch {
			case nodes > 0:
				rep, err = benchCluster(cmd.Context(), o, nodes, stderr)
			case store == "postgres":
				pg, perr := startBenchPostgres(stderr)
				if perr != nil {
					return perr
				}
				defer pg.stop()
				if perr := pg.use(&o, "otafleet_bench"); perr != nil {
					return perr
				}
				rep, err = bench.Run(cmd.Context(), o)
			default:
				rep, err = bench.Run(cmd.Context(), o)
			}
			if rep != nil {
				if asJSON {
					b, jerr := json.MarshalIndent(rep, "", "  ")
					if jerr != nil {
						return jerr
					}
					fmt.Fprintf(stdout, "%s\n", b)
				} else if werr := rep.Write(stdout); werr != nil {
					return werr
				}
			}
			if err != nil {
				return err
			}
			if !rep.OK() {
				return fmt.Errorf("the run found %d problem(s)", len(rep.Problems))
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&scale, "scale", "", "profile: small (1,000 devices) or large (100,000)")
	fs.StringVar(&store, "store", "pebble", "the server's store: pebble (in its data folder) or postgres (bench starts a private PostgreSQL, initdb and pg_ctl from pg_config --bindir)")
	fs.IntVar(&nodes, "nodes", 0, "run the workload on one plain server, then on a cluster of this many `serve --cluster` nodes (bench starts etcd; implies --store postgres), and compare their CPU per upgrade")
	fs.IntVar(&o.Devices, "devices", o.Devices, "devices in the fleet")
	fs.StringVar(&o.Protocol, "protocol", o.Protocol, "mqtt, lwm2m, pcp or mixed")
	fs.IntVar(&o.Cells, "cells", o.Cells, "radio cells the LwM2M devices are spread over")
	fs.StringVar(&o.Coverage, "coverage", o.Coverage, "good, medium, poor or mixed (75% good, 20% medium, 5% poor)")
	fs.Float64Var(&o.FailRate, "fail-rate", 0, "share of devices, 0 to 1, that fail their upgrade")
	fs.DurationVar(&o.ThinkTime, "think-time", 0, "each device's pause before acting on an upgrade command and before installing (0.5 to 1.5 times this, by device)")
	fs.Int64Var(&o.BytesPerSecond, "bandwidth", 0, "each device's download bandwidth, bytes per second (0: unlimited)")
	fs.Float64Var(&o.DropRate, "drop-rate", 0, "share, 0 to 1, of the datagrams each LwM2M device receives that it loses at random")
	fs.IntVar(&o.PackageBytes, "package-size", o.PackageBytes, "package size in bytes (at most 8 MiB)")
	fs.BoolVar(&o.DTLS, "dtls", false, "LwM2M devices use DTLS with a PSK")
	fs.StringVar(&killAt, "kill-at", "", "kill the server with SIGKILL when this share of devices is final (e.g. 50%), then restart it")
	fs.StringVar(&killNode, "kill-node", "", "with --nodes 2 or more: kill one node (not the one bench's API client uses) with SIGKILL when this share of devices is final (e.g. 50%); the others go on")
	fs.IntVar(&o.Retries, "retries", 0, "each task's retry_count (0 to 5): a failed device runs again a minute later; default 1 with --kill-at or --kill-node")
	fs.IntVar(&o.SimProcs, "sim-procs", 0, "simulator processes (default: one per 5,000 devices)")
	fs.BoolVar(&o.IdleOnly, "idle-only", false, "stop after measuring the registered, connected, idle fleet")
	fs.DurationVar(&o.IdleSettle, "idle-settle", 0, "wait this long with the fleet idle before measuring its memory (e.g. past --serve-arg=--passivate-after=10s)")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "how long the tasks may take")
	fs.StringVar(&o.DataDir, "data-dir", "", "the server's data folder (must be empty); default: a temporary one")
	fs.BoolVar(&o.Keep, "keep", false, "keep the data folder (logs, store, simulator reports) after the run")
	fs.StringArrayVar(&serveArgs, "serve-arg", nil, "extra argument for `otafleet serve` (repeatable), e.g. --serve-arg=--passivate-after=10s")
	fs.StringVar(&o.CPUProfile, "cpu-profile", "", "write the server's CPU profile of the tasks' run (from the first task's creation to the end of the last) to this file, for go tool pprof")
	fs.BoolVar(&asJSON, "json", false, "print the report as one JSON object")
	fs.StringVar(&o.SimCPUProfile, "sim-cpu-profile", "", "write the first simulator process's CPU profile to this file")
	fs.StringVar(&o.SimLogLevel, "sim-log-level", "warn", "the simulators' log level (their logs are DATA-DIR/sim-*.log; see --keep)")
	return cmd
}

// benchPG is the private PostgreSQL of a bench run and the seal key file
// its servers use.
type benchPG struct {
	srv      *pgserver.Server
	keyDir   string
	keyFile  string
	progress io.Writer
}

// startBenchPostgres starts a private PostgreSQL for a bench run and writes
// a seal key file of its own; stop stops it and removes its folder and the
// key.
func startBenchPostgres(progress io.Writer) (*benchPG, error) {
	srv, err := pgserver.Start("otafleet-bench-pg-")
	if err != nil {
		return nil, err
	}
	pg := &benchPG{srv: srv, progress: progress}
	if pg.keyDir, err = os.MkdirTemp("", "otafleet-bench-key-"); err != nil {
		pg.stop()
		return nil, err
	}
	key := make([]byte, sealKeySize)
	if _, err := rand.Read(key); err != nil {
		pg.stop()
		return nil, err
	}
	pg.keyFile = filepath.Join(pg.keyDir, "seal.key")
	if err := os.WriteFile(pg.keyFile, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		pg.stop()
		return nil, err
	}
	return pg, nil
}

func (pg *benchPG) stop() {
	if err := pg.srv.Stop(); err != nil {
		fmt.Fprintln(pg.progress, "bench: stopping PostgreSQL:", err)
	}
	if pg.keyDir != "" {
		_ = os.RemoveAll(pg.keyDir)
	}
}

// use creates the database name and points the server(s) of o at it
// (--store, --seal-key-file), and the report at the PostgreSQL server.
func (pg *benchPG) use(o *bench.Options, name string) error {
	dsn, err := pg.srv.CreateDatabase(name, "")
	if err != nil {
		return err
	}
	if o.StorePID, err = pg.srv.PID(); err != nil {
		return err
	}
	o.ServeArgs = append(slices.Clone(o.ServeArgs), "--store="+dsn, "--seal-key-file="+pg.keyFile)
	o.StoreDSN = dsn
	fmt.Fprintln(pg.progress, "bench: the server's store is a private PostgreSQL:", redactedDSN(dsn))
	return nil
}

// benchCluster runs the workload of o twice on one private PostgreSQL
// server: first on one plain server (no --cluster) over a fresh database,
// then on a cluster of n nodes over another, with a private etcd; it
// returns the cluster run's report with the single node's figures and the
// ratio of their engine CPU per finished device.
func benchCluster(ctx context.Context, o bench.Options, n int, progress io.Writer) (*bench.Report, error) {
	pg, err := startBenchPostgres(progress)
	if err != nil {
		return nil, err
	}
	defer pg.stop()
	etcd, err := etcdserver.Start("otafleet-bench-etcd-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := etcd.Stop(); err != nil {
			fmt.Fprintln(progress, "bench: stopping etcd:", err)
		}
	}()
	single, cluster := o, o
	if o.DataDir != "" {
		single.DataDir = filepath.Join(o.DataDir, "single")
		cluster.DataDir = filepath.Join(o.DataDir, "cluster")
	}
	single.CPUProfile, single.SimCPUProfile = "", "" // the cluster run's
	single.KillNode = 0
	if err := pg.use(&single, "otafleet_bench_single"); err != nil {
		return nil, err
	}
	fmt.Fprintln(progress, "bench: the workload on one plain server first")
	srep, err := bench.Run(ctx, single)
	if err != nil {
		return srep, fmt.Errorf("the single-node run: %w", err)
	}
	if err := pg.use(&cluster, "otafleet_bench_cluster"); err != nil {
		return nil, err
	}
	cluster.Nodes = n
	cluster.Etcd = strings.TrimPrefix(etcd.URL(), "http://")
	cluster.ClusterName = "bench"
	cluster.EtcdPID = etcd.PID()
	fmt.Fprintf(progress, "bench: the workload on a cluster of %d nodes (etcd %s)\n", n, etcd.URL())
	rep, err := bench.Run(ctx, cluster)
	if rep != nil {
		rep.SingleNode = srep.Single()
		if srep.EngineCPUPerUpgradeMs > 0 {
			rep.ClusterCPURatio = rep.EngineCPUPerUpgradeMs / srep.EngineCPUPerUpgradeMs
		}
		for _, p := range srep.Problems {
			rep.Problems = append(rep.Problems, "single node: "+p)
		}
	}
	return rep, err
}
