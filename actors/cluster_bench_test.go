//go:build !race

// (Without -race for the reason cluster_test.go gives.)

package actors_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/internal/etcdtest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence/pgstore"
)

// BenchmarkClusterReports measures the price of cross-node messages:
// device reports (each waited for until journaled, synced) delivered at
// one node, side by side on one PostgreSQL server: an engine alone
// (single), a one-node cluster (its grains all local: the price of the
// cluster's bookkeeping), and three nodes in this process (two thirds of
// the reports cross to the owner node over protoactor remote and the
// answer comes back). Besides reports/s it reports the process's CPU per
// report: all nodes' (PostgreSQL's and etcd's are other processes), which
// the machine's other load moves less than the wall time.
//
//	go test ./actors -run '^$' -bench ClusterReports -benchtime 2000x
func BenchmarkClusterReports(b *testing.B) {
	for _, v := range []struct {
		name  string
		nodes int // 0: no cluster
	}{{"single", 0}, {"nodes=1", 1}, {"nodes=3", 3}} {
		b.Run(v.name, func(b *testing.B) {
			clk := clocktest.New(epoch)
			dsn := migratedDatabase(b)
			var name string
			var url string
			if v.nodes > 0 {
				srv := etcdtest.Shared(b)
				name, url = srv.NewCluster("bench"), srv.URL()
			}
			var engines []*actors.Engine
			for range max(v.nodes, 1) {
				cfg := actors.Config{}
				if v.nodes > 0 {
					cfg.Cluster = &actors.ClusterConfig{Etcd: []string{url}, Name: name, BindAddr: "127.0.0.1:0"}
				}
				store, err := pgstore.Open(context.Background(), dsn, pgstore.Options{SealKey: pgSealKey, Logger: slog.New(slog.DiscardHandler)})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = store.Close() })
				engines = append(engines, newBenchEngine(b, store, clk, cfg, actors.Deps{}))
			}
			benchAwaitMembers(b, engines)
			e := engines[0]
			ids := benchDeviceIDs(64)
			benchQueryAll(b, e, ids)
			ctx := context.Background()
			cpu0 := processCPU(b)
			b.ResetTimer()
			var wg sync.WaitGroup
			for d, id := range ids {
				n := b.N / len(ids)
				if d < b.N%len(ids) {
					n++
				}
				wg.Go(func() {
					for r := range n {
						v := fmt.Sprintf("v%d", r)
						in := &messages.DeviceInput{Kind: &messages.DeviceInput_VersionReported{VersionReported: &messages.VersionReported{FwVersion: &v}}}
						if err := e.Deliver(ctx, id, in); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
			// The process's CPU: every node's (PostgreSQL and etcd run apart).
			b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/report")
		})
	}
}

// benchAwaitMembers waits (real time, bounded) until each clustered
// engine sees all of them.
func benchAwaitMembers(b *testing.B, engines []*actors.Engine) {
	b.Helper()
	if _, ok := engines[0].Cluster(); !ok {
		return
	}
	limit := clock.Real().NewTimer(20 * time.Second)
	defer limit.Stop()
	for _, e := range engines {
		for {
			ok, tick := e.ClusterSettled(len(engines))
			if ok {
				break
			}
			select {
			case <-tick:
			case <-limit.C():
				b.Fatalf("%d nodes did not see each other in 20 s", len(engines))
			}
		}
	}
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkClusterCampaign prices the cluster at the level of a whole
// upgrade: one FOTA task over 480 scripted devices in 16 cells, on an
// engine alone (single) and on three nodes in this process (nodes=3,
// devices connected a third to each node, grains wherever the hash puts
// them), both on one PostgreSQL server. It reports the process's CPU per
// upgrade (the engines', the scripted devices' and the test harness's;
// PostgreSQL's and etcd's are other processes) and the ratio is the price
// of the cross-node messages. Each iteration is a whole campaign:
//
//	go test ./actors -run '^$' -bench ClusterCampaign -benchtime 1x -count 3
func BenchmarkClusterCampaign(b *testing.B) {
	for _, v := range []struct {
		name  string
		nodes int
		alone bool
	}{{"single", 1, true}, {"nodes=3", 3, false}} {
		b.Run(v.name, func(b *testing.B) {
			var cpu time.Duration
			upgrades := 0
			var commits uint64
			for range b.N {
				b.StopTimer()
				c := newClusterRig(b)
				c.alone = v.alone
				specs := fleet(480, 16, messages.Protocol_PROTOCOL_LWM2M_FOTA)
				trs := map[string]*memtransport.Transport{}
				var nsp []nodeSpec
				per := len(specs) / v.nodes
				for i := range v.nodes {
					nsp = append(nsp, nodeSpec{devices: specs[i*per : (i+1)*per]})
				}
				ns := c.addNodes(nsp...)
				for i, n := range ns {
					for _, s := range specs[i*per : (i+1)*per] {
						trs[s.ID] = n.tr
					}
				}
				c.awaitMembers()
				c.settle()
				commits0 := groupCommits(ns)
				cpu0 := processCPU(b)
				b.StartTimer()
				if err := ns[0].e.CreateTask(context.Background(), createTask("bench", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), nil)); err != nil {
					b.Fatal(err)
				}
				c.runUntil(func() bool { return c.task(ns[0], "bench").Status.Final() }, 24*time.Hour)
				b.StopTimer()
				cpu += processCPU(b) - cpu0
				commits += groupCommits(ns) - commits0
				upgrades += len(specs)
				c.check("bench", specs, trs)
			}
			b.ReportMetric(float64(cpu.Microseconds())/float64(upgrades), "cpu-µs/upgrade")
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(upgrades), "µs/upgrade")
			// The nodes' group commits (each a round trip to PostgreSQL and
			// its statement's encoding): every node's committer batches only
			// its own actors' appends.
			b.ReportMetric(float64(commits)/float64(upgrades), "commits/upgrade")
		})
	}
}

// groupCommits sums the nodes' stores' group commits.
func groupCommits(ns []*clusterNode) uint64 {
	var n uint64
	for _, c := range ns {
		if g, ok := c.store.(interface{ GroupCommits() uint64 }); ok {
			n += g.GroupCommits()
		}
	}
	return n
}
