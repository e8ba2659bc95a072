package main

import (
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
		asJSON               bool
		serveArgs            []string
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
lists problems.`,
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
			if o.KillAt > 0 && !cmd.Flags().Changed("retries") {
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
			switch store {
			case "", "pebble":
			case "postgres":
				stop, err := benchPostgres(&o, stderr)
				if err != nil {
					return err
				}
				defer stop()
			default:
				return usage("--store %q: want pebble or postgres", store)
			}
			o.Command = "otafleet " + strings.Join(os.Args[1:], " ")
			o.Progress = stderr // progress lines; the report goes to stdout
			rep, err := bench.Run(cmd.Context(), o)
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
	fs.IntVar(&o.Devices, "devices", o.Devices, "devices in the fleet")
	fs.StringVar(&o.Protocol, "protocol", o.Protocol, "mqtt, lwm2m, pcp or mixed")
	fs.IntVar(&o.Cells, "cells", o.Cells, "radio cells the LwM2M devices are spread over")
	fs.StringVar(&o.Coverage, "coverage", o.Coverage, "good, medium, poor or mixed (75% good, 20% medium, 5% poor)")
	fs.Float64Var(&o.FailRate, "fail-rate", 0, "share of devices, 0 to 1, that fail their upgrade")
	fs.DurationVar(&o.ThinkTime, "think-time", 0, "each device's pause before acting on an upgrade command and before installing (0.5 to 1.5 times this, by device)")
	fs.Int64Var(&o.BytesPerSecond, "bandwidth", 0, "each device's download bandwidth, bytes per second (0: unlimited)")
	fs.IntVar(&o.PackageBytes, "package-size", o.PackageBytes, "package size in bytes (at most 8 MiB)")
	fs.BoolVar(&o.DTLS, "dtls", false, "LwM2M devices use DTLS with a PSK")
	fs.StringVar(&killAt, "kill-at", "", "kill the server with SIGKILL when this share of devices is final (e.g. 50%), then restart it")
	fs.IntVar(&o.Retries, "retries", 0, "each task's retry_count (0 to 5): a failed device runs again a minute later; default 1 with --kill-at")
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

// benchPostgres starts a private PostgreSQL for a bench run and points the
// server at it (--store, and a seal key file of its own); stop stops it
// and removes its folder and the key.
func benchPostgres(o *bench.Options, progress io.Writer) (stop func(), err error) {
	srv, err := pgserver.Start("otafleet-bench-pg-")
	if err != nil {
		return nil, err
	}
	keyDir, err := os.MkdirTemp("", "otafleet-bench-key-")
	if err != nil {
		_ = srv.Stop()
		return nil, err
	}
	stop = func() {
		if err := srv.Stop(); err != nil {
			fmt.Fprintln(progress, "bench: stopping PostgreSQL:", err)
		}
		_ = os.RemoveAll(keyDir)
	}
	dsn, err := srv.CreateDatabase("otafleet_bench", "")
	if err != nil {
		stop()
		return nil, err
	}
	key := make([]byte, sealKeySize)
	if _, err := rand.Read(key); err != nil {
		stop()
		return nil, err
	}
	keyFile := filepath.Join(keyDir, "seal.key")
	if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		stop()
		return nil, err
	}
	if o.StorePID, err = srv.PID(); err != nil {
		stop()
		return nil, err
	}
	o.ServeArgs = append(o.ServeArgs, "--store="+dsn, "--seal-key-file="+keyFile)
	o.StoreDSN = dsn
	fmt.Fprintln(progress, "bench: the server's store is a private PostgreSQL:", redactedDSN(dsn))
	return stop, nil
}
