package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/internal/etcdtest"
)

// clusterAddDevices is the fleet of TestProcessClusterNodeAdded (as the
// kill test's: well under a minute on two cores).
const clusterAddDevices = 300

// TestProcessClusterNodeAdded: a node added mid-campaign takes a share of
// the grains without a double upgrade. etcd, PostgreSQL and two
// `serve --cluster` nodes; two `otafleet sim` processes whose mixed
// devices (MQTT, LwM2M FOTA, PCP) start on one node each and know both;
// one task per protocol. When a third of the devices are final, a third
// node starts. It joins, and owns live device and cell grains (cluster
// status, asked of the first node), moved to it from the running ones
// (it journals: /metrics); the campaign ends with every device in exactly
// one final state, none failed (nothing the move does may cost a device
// its upgrade: the old owner passivates what it hands over, the new one
// recovers it from the store), every success installed once by the
// simulators' count, and no cell over its budget after any event of its
// journal, whichever node wrote it.
func TestProcessClusterNodeAdded(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	etcd := etcdtest.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	store := newProcessStore(t, t.TempDir(), true)
	name := etcd.NewCluster("add")
	// The kill test's step timeouts: a command the move loses fails its
	// device within 10 s instead of minutes.
	args := clusterStepArgs("10s")
	nodes := []*clusterNode{
		startClusterNode(ctx, t, etcd, name, store, args...),
		startClusterNode(ctx, t, etcd, name, store, args...),
	}
	api := nodes[0]
	token := readToken(t, api.dir)
	awaitMembers(ctx, t, api.api, token, 2)
	// Each device pauses (0.5 to 1.5 times) 2 s before it acts on its
	// upgrade and before it installs, so that the campaign outlasts the
	// third node's start (2 to 4 s here): it joins mid-campaign.
	c := startClusterCampaign(ctx, t, api, token, nodes, clusterAddDevices, "--think-time", "2s")

	final := c.awaitFinal(ctx, clusterAddDevices/3)
	started := clock.Real().Now()
	added := startClusterNode(ctx, t, etcd, name, store, args...)
	nodes = append(nodes, added)
	t.Logf("node %s started with %d of %d devices final", added.addr, final, clusterAddDevices)
	joined := awaitMembers(ctx, t, api.api, token, 3)
	final, _ = progress(ctx, t, c.cli, c.tasks)
	t.Logf("the first node lists it %.1fs after its start, %d devices final", joined.Sub(started).Seconds(), final)
	if final >= clusterAddDevices*9/10 {
		t.Errorf("the node joined at the campaign's end (%d of %d devices final), not in its middle", final, clusterAddDevices)
	}

	// It takes device and cell grains: the running ones' live actors that
	// it now owns move to it (the campaign is two thirds to go: devices
	// with a job, cells with holders or waiters).
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for most := map[string]uint32{}; ; {
		var live map[string]uint32
		for _, n := range getClusterStatus(ctx, t, api.api, token).GetNodes() {
			if n.GetAddress() == added.addr {
				live = n.GetLive()
			}
		}
		for k, v := range live {
			most[k] = max(most[k], v)
		}
		if most["device"] > 0 && most["cell"] > 0 {
			t.Logf("the new node's live grains %.1fs after it joined: %v", time.Since(joined).Seconds(), live)
			break
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("the new node never held device and cell grains: %v", most)
		}
	}

	counts := c.awaitDone(ctx, func(processing []string) {
		for _, n := range nodes {
			_ = n.cmd.Process.Signal(syscall.SIGKILL)
		}
		dumpInFlight(t, store)
		dumpJournals(t, store, processing[:min(len(processing), 4)])
	})
	t.Logf("campaign: %v", counts)
	failed, reason := c.checkDevices(ctx)
	if len(failed) > 0 {
		t.Errorf("%d devices failed: %v", len(failed), reason)
		dumpJournals(t, store, failed[:min(len(failed), 4)])
	}
	if upgrades := c.stopSims(); upgrades != counts["success"] {
		t.Errorf("the simulators installed %d upgrades, the tasks count %d successes", upgrades, counts["success"])
	}

	// The new node wrote journals (what it took over went on there), no
	// node saw a cell step break its budget, and the fenced actors (a
	// moved one's old activation writing after its successor) are logged.
	for _, n := range nodes {
		m := nodeMetrics(t, n.api)
		t.Logf("node %s: synced appends %v, inputs from other nodes %v, fenced %v", n.addr,
			m["otafleet_journal_synced_appends_total"], m[`otafleet_cluster_inputs_total{direction="received"}`], m["otafleet_actors_fenced_total"])
		if v := m["otafleet_cell_budget_violations_total"]; v != 0 {
			t.Errorf("node %s: %v cell budget violations", n.addr, v)
		}
		if n == added && m["otafleet_journal_synced_appends_total"] == 0 {
			t.Errorf("the new node journaled nothing")
		}
	}
	for _, n := range nodes {
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
		if err, lines := n.waitRaw(ctx); err != nil && !thirdPartyRacesOnly(t, err, lines) {
			t.Errorf("node %s, SIGTERM: %v", n.addr, err)
		}
	}
	checkCellJournals(t, store, c.ids())
}

// nodeMetrics reads api's /metrics: each series by its name and its labels
// other than node (name{label="value",...} in label order), and each
// family's sum under its bare name.
func nodeMetrics(t *testing.T, api string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			var labels []string
			for _, l := range m.GetLabel() {
				if l.GetName() != "node" {
					labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
			}
			out[name] += v
			if len(labels) > 0 {
				out[name+"{"+strings.Join(labels, ",")+"}"] += v
			}
		}
	}
	return out
}
