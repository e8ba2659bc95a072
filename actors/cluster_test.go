//go:build !race

// The cluster tests run several nodes in one process, each with its own
// protoactor remote and cluster. The pinned protoactor-go is not
// race-free there: remote.Start sets gRPC's global logger unsynchronized
// (grpclog.SetLoggerV2 against the other nodes' gRPC goroutines), the
// gossipers share one math/rand source, and BlockList and the etcd
// provider's shutdown flag are written and read unlocked. Under -race
// these fail every multi-node test (and the etcd provider's flag, even a
// one-node cluster's Stop), so they build without it. What the cluster
// relies on that runs without protoactor's cluster is tested under -race:
// fencing (fence_test.go) and the wire forms of requests, replies and
// errors (clusterwire_test.go).

package actors_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/actors/cell/cellfsm"
	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/internal/etcdtest"
	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/persistence/pgstore"
	"github.com/otafleet/otafleet/transport"
)

// clusterRig is a cluster of engines in this process: each node its own
// actor system and protoactor remote on 127.0.0.1:0 and its own connection
// pool to one PostgreSQL database, with membership from one real etcd; the
// fake clock is shared. Devices connect to the nodes given at start (their
// sessions live in that node's in-memory transport); grains live where the
// rendezvous hash puts them.
type clusterRig struct {
	t   testing.TB
	clk *clocktest.Clock
	dsn string // the nodes' database
	// alone: the nodes are engines without a cluster (benchmarks compare).
	alone  bool
	etcd   *etcdtest.Server
	name   string
	notify chan struct{}

	mu         sync.Mutex
	nodes      []*clusterNode
	violations []string
	peak       map[string]uint32
	activated  map[string]map[persistence.Kind]int // by node address
	cellNodes  map[string]map[string]bool          // the nodes each cell ran on
}

type clusterNode struct {
	e       *actors.Engine
	reg     *prometheus.Registry
	tr      *memtransport.Transport // nil: a node no device connects to
	store   persistence.EventStore
	addr    string
	stopped bool
}

func newClusterRig(t testing.TB) *clusterRig {
	t.Helper()
	srv := etcdtest.Shared(t)
	return &clusterRig{
		t: t, clk: clocktest.New(epoch), dsn: migratedDatabase(t),
		etcd: srv, name: srv.NewCluster("actors"), notify: make(chan struct{}, 1),
		peak: map[string]uint32{}, activated: map[string]map[persistence.Kind]int{}, cellNodes: map[string]map[string]bool{},
	}
}

// openStore opens a store on the nodes' database, closed at the end.
func (c *clusterRig) openStore() persistence.EventStore {
	c.t.Helper()
	st, err := pgstore.Open(context.Background(), c.dsn, pgstore.Options{SealKey: pgSealKey, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = st.Close() })
	return st
}

// migratedDatabase creates a fresh database of the current schema on the
// package's PostgreSQL server and returns its DSN.
func migratedDatabase(t testing.TB) string {
	t.Helper()
	return pgtest.Shared(t).NewDatabaseFrom(t, "migrated", func(dsn string) error {
		ctx := context.Background()
		pool, err := pgxpool.New(ctx, dsn)
		if err != nil {
			return err
		}
		defer pool.Close()
		_, err = pgstore.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
		return err
	})
}

// addNode starts a node; the devices of specs connect to it (none: a node
// that only hosts grains).
func (c *clusterRig) addNode(specs []memtransport.DeviceSpec) *clusterNode {
	return c.addNodes(nodeSpec{devices: specs})[0]
}

// nodeSpec is a node for addNodes: the devices that connect to it, and
// whether it can be crashed (crash).
type nodeSpec struct {
	devices   []memtransport.DeviceSpec
	crashable bool
}

// addNodes starts nodes at once (each join takes a second of protoactor's).
func (c *clusterRig) addNodes(specs ...nodeSpec) []*clusterNode {
	c.t.Helper()
	nodes := make([]*clusterNode, len(specs))
	for i, s := range specs {
		nodes[i] = c.newNode(s.devices, s.crashable)
	}
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() { errs[i] = n.e.Start(context.Background()) })
	}
	wg.Wait()
	for i, n := range nodes {
		if errs[i] != nil {
			c.t.Fatal(errs[i])
		}
		n.addr = n.e.ClusterAddr()
		c.mu.Lock()
		c.nodes = append(c.nodes, n)
		c.mu.Unlock()
		if n.tr != nil {
			if err := n.tr.ConnectAll(context.Background()); err != nil {
				c.t.Fatal(err)
			}
		}
	}
	return nodes
}

// newNode builds a node's engine (not started).
func (c *clusterRig) newNode(specs []memtransport.DeviceSpec, crashable bool) *clusterNode {
	t := c.t
	t.Helper()
	n := &clusterNode{reg: prometheus.NewRegistry()}
	store := c.openStore()
	n.store = store
	cellCfg := cellfsm.DefaultConfig()
	var tr transport.Downlinks = dropAll{}
	var up *transport.LateUplinks
	if len(specs) > 0 {
		n.tr, up = newFleetTransport(t, c.clk, specs)
		tr = n.tr
	}
	var self func() string
	cfg := actors.Config{PassivateAfter: 10 * time.Minute, Cluster: &actors.ClusterConfig{
		Etcd: []string{c.etcd.URL()}, Name: c.name, BindAddr: "127.0.0.1:0",
	}}
	if c.alone {
		cfg.Cluster = nil
	}
	e, err := actors.New(cfg, actors.Deps{
		Store: store, Clock: c.clk, Transport: tr, Metrics: n.reg,
		CellStepped: func(id string, s cellfsm.State) {
			c.mu.Lock()
			defer c.mu.Unlock()
			if err := s.Check(cellCfg); err != nil || s.Used() > cellCfg.Budget {
				c.violations = append(c.violations, fmt.Sprintf("%s: used %d: %v", id, s.Used(), err))
			}
			c.peak[id] = max(c.peak[id], s.Used())
		},
		Activated: func(a actors.Address) {
			c.mu.Lock()
			defer c.mu.Unlock()
			m := c.activated[self()]
			if m == nil {
				m = map[persistence.Kind]int{}
				c.activated[self()] = m
			}
			m[a.Kind]++
			if a.Kind == persistence.KindCell {
				if c.cellNodes[a.ID] == nil {
					c.cellNodes[a.ID] = map[string]bool{}
				}
				c.cellNodes[a.ID][self()] = true
			}
		},
		ClusterReceived: func() {
			select {
			case c.notify <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	n.e = e
	self = e.ClusterAddr
	if crashable {
		e.Crashable()
	}
	if up != nil {
		up.Set(e)
	}
	t.Cleanup(e.Stop)
	return n
}

func (c *clusterRig) live() []*clusterNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*clusterNode
	for _, n := range c.nodes {
		if !n.stopped {
			out = append(out, n)
		}
	}
	return out
}

// stop stops node n (gracefully: it leaves the cluster first).
func (c *clusterRig) stop(n *clusterNode) {
	n.e.Stop()
	c.mu.Lock()
	n.stopped = true
	c.mu.Unlock()
}

// crash kills node n abruptly (see Engine.Crash): the others see it go
// when its etcd lease expires.
func (c *clusterRig) crash(n *clusterNode) {
	n.e.Crash()
	c.mu.Lock()
	n.stopped = true
	c.mu.Unlock()
}

// awaitMembers waits (real time, bounded) until every live node sees the
// live nodes as the members and has reconciled the change.
func (c *clusterRig) awaitMembers() {
	c.t.Helper()
	if c.alone {
		return
	}
	live := c.live()
	limit := clock.Real().NewTimer(20 * time.Second)
	defer limit.Stop()
	for _, n := range live {
		for {
			ok, tick := n.e.ClusterSettled(len(live))
			if ok {
				break
			}
			select {
			case <-tick:
			case <-limit.C():
				c.t.Fatalf("node %s did not see %d members in 20 s", n.addr, len(live))
			}
		}
	}
}

// settle waits until every live node has handled every input sent to it,
// from every live node, and nothing moves any more.
func (c *clusterRig) settle() {
	c.t.Helper()
	limit := clock.Real().NewTimer(30 * time.Second)
	defer limit.Stop()
	for {
		live := c.live()
		for _, n := range live {
			n.e.Settle()
		}
		if c.alone {
			return
		}
		before := c.traffic(live)
		if before.balanced {
			for _, n := range live {
				n.e.Settle()
			}
			if after := c.traffic(live); after.balanced && after.total == before.total {
				return
			}
			continue
		}
		select {
		case <-c.notify:
		case <-limit.C():
			c.t.Fatalf("the cluster did not settle in 30 s: %+v", before)
		}
	}
}

type traffic struct {
	total    int64
	balanced bool
}

// traffic sums the inputs between live nodes; balanced when each node
// received from each other all that one sent it.
func (c *clusterRig) traffic(live []*clusterNode) traffic {
	sent := map[[2]string]int64{}
	recv := map[[2]string]int64{}
	for _, n := range live {
		s, r := n.e.ClusterTraffic()
		for to, k := range s {
			sent[[2]string{n.addr, to}] = k
		}
		for from, k := range r {
			recv[[2]string{from, n.addr}] = k
		}
	}
	tr := traffic{balanced: true}
	for _, a := range live {
		for _, b := range live {
			k := [2]string{a.addr, b.addr}
			tr.total += sent[k]
			if sent[k] != recv[k] {
				tr.balanced = false
			}
		}
	}
	return tr
}

// runUntil advances the fake clock from timer to timer, settling the
// cluster after each, until done holds or limit of protocol time passed.
func (c *clusterRig) runUntil(done func() bool, limit time.Duration) {
	c.t.Helper()
	end := c.clk.Now().Add(limit)
	c.settle()
	for !done() {
		next, ok := c.clk.NextDeadline()
		if !ok || next.After(end) {
			c.t.Fatalf("not done after %v of protocol time (next timer %v, ok %v)", limit, next, ok)
		}
		c.clk.AdvanceTo(next)
		c.settle()
	}
}

func (c *clusterRig) task(n *clusterNode, id string) actors.TaskView {
	c.t.Helper()
	v, err := n.e.Task(context.Background(), id)
	if err != nil {
		c.t.Fatal(err)
	}
	return v
}

// check verifies a finished campaign over specs: the task succeeded with
// exact counters, every device ran exactly one Execute and has the new
// version, and no cell ever went over its budget.
func (c *clusterRig) check(id string, specs []memtransport.DeviceSpec, trs map[string]*memtransport.Transport) {
	t := c.t
	t.Helper()
	v := c.task(c.live()[0], id)
	want := taskfsm.Progress{Total: len(specs), Success: len(specs)}
	if v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS || v.Progress != want {
		t.Fatalf("task: %v %+v", v.Status, v.Progress)
	}
	for _, s := range specs {
		d, _ := trs[s.ID].Device(s.ID)
		if d.Counters.Executes != 1 || d.FwVersion != "2.0" {
			t.Errorf("%s: %d executes, version %q", s.ID, d.Counters.Executes, d.FwVersion)
		}
	}
	c.mu.Lock()
	cells := slices.Sorted(maps.Keys(c.peak))
	if len(c.violations) > 0 {
		t.Fatalf("cell budget broken %d times, first: %s", len(c.violations), c.violations[0])
	}
	c.mu.Unlock()
	c.checkJournal(cells)
}

// checkJournal folds each cell's journal from its first event, as a cell
// actor's recovery does, and checks the budget after every event: whichever
// node wrote it, no cell ever held more than its budget.
func (c *clusterRig) checkJournal(cells []string) {
	t := c.t
	t.Helper()
	cfg := cellfsm.DefaultConfig()
	store := c.openStore()
	most := uint32(0)
	for _, id := range cells {
		s := cellfsm.New(id)
		n := 0
		err := store.Load(context.Background(), persistence.Stream{Kind: persistence.KindCell, ID: id}, 0, func(ev persistence.Event) error {
			e := &messages.CellEvent{}
			if err := proto.Unmarshal(ev.Payload, e); err != nil {
				return err
			}
			s = cellfsm.Evolve(s, e)
			n++
			if err := s.Check(cfg); err != nil || s.Used() > cfg.Budget {
				return fmt.Errorf("cell %s over budget after event %d: used %d: %v", id, ev.Seq, s.Used(), err)
			}
			most = max(most, s.Used())
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Errorf("cell %s journaled nothing", id)
		}
	}
	if most == 0 {
		t.Errorf("no cell's journal holds a grant")
	}
}

// gauge reads the unlabelled counter or gauge name from reg.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

// queuedFleet is 240 devices in 12 cells, all of poor coverage, so that
// each cell upgrades one device at a time and the campaign goes in twenty
// waves: the nodes come and go mid-campaign, and with twelve cells each
// node is likely to hold some.
func queuedFleet() []memtransport.DeviceSpec {
	specs := fleet(240, 12, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	for i := range specs {
		rsrp, sinr := int32(-121), int32(-5)
		specs[i].RSRP, specs[i].SINR = &rsrp, &sinr
	}
	return specs
}

// midCampaign checks that task id is still far from done (a quarter of
// its devices or more still upgrading or queued for their cell's budget),
// so that what happens now happens mid-campaign.
func (c *clusterRig) midCampaign(n *clusterNode, id string, total int) {
	c.t.Helper()
	p := c.task(n, id).Progress
	if p.Processing < total/4 {
		c.t.Fatalf("not mid-campaign: %+v", p)
	}
	c.t.Logf("mid-campaign: %+v", p)
}

// cellsMoved counts the cells that ran on more than one node.
func (c *clusterRig) cellsMoved() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, nodes := range c.cellNodes {
		if len(nodes) > 1 {
			n++
		}
	}
	return n
}

// TestClusterCampaign: three nodes; devices connect to two of them; one
// FOTA task upgrades 120 with grains spread over the three (uplinks
// enter on one node, the device grains live on any, downlinks go back to
// the session's node). Every device executes once, the cell budgets hold,
// and every node ran device grains.
func TestClusterCampaign(t *testing.T) {
	c := newClusterRig(t)
	specs := fleet(120, 6, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	ns := c.addNodes(nodeSpec{devices: specs[:60]}, nodeSpec{devices: specs[60:]}, nodeSpec{})
	a, b := ns[0], ns[1]
	c.awaitMembers()
	c.settle()
	trs := map[string]*memtransport.Transport{}
	for _, s := range specs[:60] {
		trs[s.ID] = a.tr
	}
	for _, s := range specs[60:] {
		trs[s.ID] = b.tr
	}
	if err := b.e.CreateTask(context.Background(), createTask("cluster", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), nil)); err != nil {
		t.Fatal(err)
	}
	c.runUntil(func() bool { return c.task(a, "cluster").Status.Final() }, 24*time.Hour)
	c.check("cluster", specs, trs)
	nodes, ok := a.e.ClusterNodes(context.Background())
	if !ok || len(nodes) != 3 {
		t.Fatalf("ClusterNodes: %v %v", nodes, ok)
	}
	devices := 0
	for _, n := range nodes {
		if n.Err != nil || n.Live == nil {
			t.Errorf("node %s: %v %v", n.Addr, n.Live, n.Err)
		}
		devices += n.Live["device"]
	}
	if devices == 0 {
		t.Errorf("no live device grain on any node: %v", nodes)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		if c.activated[n.addr][persistence.KindDevice] == 0 {
			t.Errorf("node %s ran no device grain: %v", n.addr, c.activated)
		}
	}
	t.Logf("activations by node: %v", c.activated)
}

// TestClusterNodeLeavesAndJoins: a campaign over three nodes; when a third
// of the devices have upgraded, a node that hosts grains (no sessions)
// stops, and the others take its grains over from the store; later a new
// node joins and takes a share. The task still ends with every device
// upgraded exactly once and no cell over its budget.
func TestClusterNodeLeavesAndJoins(t *testing.T) {
	c := newClusterRig(t)
	specs := queuedFleet()
	ns := c.addNodes(nodeSpec{devices: specs[:120]}, nodeSpec{devices: specs[120:]}, nodeSpec{})
	a, b, gone := ns[0], ns[1], ns[2]
	c.awaitMembers()
	c.settle()
	trs := map[string]*memtransport.Transport{}
	for _, s := range specs[:120] {
		trs[s.ID] = a.tr
	}
	for _, s := range specs[120:] {
		trs[s.ID] = b.tr
	}
	if err := a.e.CreateTask(context.Background(), createTask("moves", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), nil)); err != nil {
		t.Fatal(err)
	}
	c.runUntil(func() bool { return c.task(a, "moves").Progress.Success >= len(specs)/3 }, 24*time.Hour)
	c.midCampaign(a, "moves", len(specs))
	// Every node lists the task's twelve cells, wherever they live; a
	// page of five and the next continue in cell order.
	for _, n := range []*clusterNode{a, b, gone} {
		var got []string
		for _, v := range n.e.TaskCells("moves", "", 0) {
			got = append(got, v.CellID)
		}
		if len(got) != 12 || !slices.IsSorted(got) {
			t.Errorf("node %s lists cells %v, want the 12 in order", n.addr, got)
		}
	}
	page := a.e.TaskCells("moves", "", 5)
	next := b.e.TaskCells("moves", page[len(page)-1].CellID, 5)
	if len(page) != 5 || len(next) != 5 || next[0].CellID <= page[4].CellID {
		t.Errorf("pages %d and %d cells, %s then %s", len(page), len(next), page[len(page)-1].CellID, next[0].CellID)
	}
	c.stop(gone)
	c.awaitMembers()
	c.settle()
	c.runUntil(func() bool { return c.task(b, "moves").Progress.Success >= 2*len(specs)/3 }, 24*time.Hour)
	c.midCampaign(b, "moves", len(specs))
	late := c.addNode(nil)
	c.awaitMembers()
	c.runUntil(func() bool { return c.task(late, "moves").Status.Final() }, 24*time.Hour)
	c.check("moves", specs, trs)
	// Grains that moved sent their first downlinks (Resume's) to every
	// node, not knowing their device's route yet: the nodes without the
	// session dropped them quietly.
	dropped := 0.0
	for _, n := range c.nodes {
		dropped += gauge(t, n.reg, "otafleet_cluster_downlinks_no_session_total")
	}
	if dropped == 0 {
		t.Error("no downlink went to a node without the session: no grain moved with a downlink to resend?")
	}
	if c.cellsMoved() == 0 {
		t.Errorf("no cell moved between nodes: %v", c.cellNodes)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.activated[late.addr][persistence.KindDevice] == 0 {
		t.Errorf("the node that joined late ran no device grain: %v", c.activated)
	}
	t.Logf("activations by node: %v", c.activated)
}

// TestClusterNodeCrashes: a campaign over three nodes; when a third of the
// devices have upgraded, a node that hosts grains dies abruptly (its etcd
// connection cut, its actors and remote stopped, nothing handed over).
// Protocol time stands still until the others see it leave (its lease, 3
// s, expires), then they recover its grains from the store and the task
// ends with every device upgraded exactly once and no cell over budget.
func TestClusterNodeCrashes(t *testing.T) {
	c := newClusterRig(t)
	specs := queuedFleet()
	ns := c.addNodes(nodeSpec{devices: specs[:120]}, nodeSpec{devices: specs[120:]}, nodeSpec{crashable: true})
	a, b, dies := ns[0], ns[1], ns[2]
	c.awaitMembers()
	c.settle()
	trs := map[string]*memtransport.Transport{}
	for _, s := range specs[:120] {
		trs[s.ID] = a.tr
	}
	for _, s := range specs[120:] {
		trs[s.ID] = b.tr
	}
	if err := a.e.CreateTask(context.Background(), createTask("crash", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), nil)); err != nil {
		t.Fatal(err)
	}
	c.runUntil(func() bool { return c.task(a, "crash").Progress.Success >= len(specs)/3 }, 24*time.Hour)
	c.midCampaign(a, "crash", len(specs))
	c.mu.Lock()
	held := c.activated[dies.addr]
	c.mu.Unlock()
	c.crash(dies)
	start := clock.Real().Now()
	c.awaitMembers()
	t.Logf("the others saw the crashed node go after %v (it had run %v)", clock.Real().Since(start), held)
	c.runUntil(func() bool { return c.task(b, "crash").Status.Final() }, 24*time.Hour)
	c.check("crash", specs, trs)
	if c.cellsMoved() == 0 {
		t.Errorf("no cell moved between nodes: %v", c.cellNodes)
	}
}

// TestClusterJoinFailsWithoutEtcd: a node whose etcd does not answer fails
// Start with an error naming etcd (protoactor's cluster panics; the engine
// turns that into the error).
func TestClusterJoinFailsWithoutEtcd(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	e, err := actors.New(actors.Config{Cluster: &actors.ClusterConfig{Etcd: []string{addr}, Name: "nobody", BindAddr: "127.0.0.1:0", JoinTimeout: time.Second}},
		actors.Deps{Store: memstore.New(), Clock: clocktest.New(epoch), Transport: dropAll{}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Stop()
	err = e.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "etcd") {
		t.Fatalf("Start = %v, want an error naming etcd", err)
	}
	t.Log(err)
}

// TestClusterNodeLost: a node that sees itself leave its own member list
// (its etcd key gone: here deleted, as its lease's expiry would) closes
// Lost and stops taking work, while the others take over its grains.
func TestClusterNodeLost(t *testing.T) {
	c := newClusterRig(t)
	specs := fleet(24, 2, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	ns := c.addNodes(nodeSpec{devices: specs}, nodeSpec{})
	a, lost := ns[0], ns[1]
	c.awaitMembers()
	c.settle()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.etcd.URL()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "/otafleet/"+c.name+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(lost.addr)
	deleted := 0
	for _, kv := range resp.Kvs {
		if strings.Contains(string(kv.Value), port) {
			if _, err := cli.Delete(ctx, string(kv.Key)); err != nil {
				t.Fatal(err)
			}
			deleted++
		}
	}
	if deleted != 1 {
		t.Fatalf("deleted %d keys of node %s among %d", deleted, lost.addr, len(resp.Kvs))
	}
	select {
	case <-lost.e.Lost():
	case <-ctx.Done():
		t.Fatal("the node did not see itself go in 10 s")
	}
	c.mu.Lock()
	lost.stopped = true
	c.mu.Unlock()
	c.awaitMembers()
	err = lost.e.Deliver(ctx, specs[0].ID, &messages.DeviceInput{Kind: &messages.DeviceInput_Connected{Connected: &messages.Connected{}}})
	if !errors.Is(err, actors.ErrClosed) {
		t.Errorf("Deliver on a lost node = %v, want ErrClosed", err)
	}
	if err := a.e.CreateTask(context.Background(), createTask("after", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), nil)); err != nil {
		t.Fatal(err)
	}
	c.runUntil(func() bool { return c.task(a, "after").Status.Final() }, 24*time.Hour)
	trs := map[string]*memtransport.Transport{}
	for _, s := range specs {
		trs[s.ID] = a.tr
	}
	c.check("after", specs, trs)
}

// TestClusterNodePartitioned: a node cut off from etcd (but not from the
// others) goes on running its actors while the others, once its lease
// expired, own them too (the store fences the second writer of each
// stream). When it reaches etcd again its provider registers it anew; the
// others have blocked it for good, so it must not carry on: it finds its
// key created anew, closes Lost and refuses work.
func TestClusterNodePartitioned(t *testing.T) {
	c := newClusterRig(t)
	specs := fleet(24, 2, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	ns := c.addNodes(nodeSpec{devices: specs}, nodeSpec{crashable: true})
	cut := ns[1]
	c.awaitMembers()
	c.settle()
	heal := cut.e.Partition()
	c.mu.Lock()
	cut.stopped = true // for the others' membership
	c.mu.Unlock()
	c.awaitMembers()
	select {
	case <-cut.e.Lost():
		t.Fatal("the node saw itself lost while etcd was out of its reach")
	default:
	}
	heal()
	limit := clock.Real().NewTimer(60 * time.Second)
	defer limit.Stop()
	select {
	case <-cut.e.Lost():
	case <-limit.C():
		t.Fatal("the node did not find itself out of the cluster within 60 s of reaching etcd again")
	}
	err := cut.e.Deliver(context.Background(), specs[0].ID, &messages.DeviceInput{Kind: &messages.DeviceInput_Connected{Connected: &messages.Connected{}}})
	if !errors.Is(err, actors.ErrClosed) {
		t.Errorf("Deliver on a lost node = %v, want ErrClosed", err)
	}
}

// TestClusterInputsLostWithANode: what was in flight to a node that dies is
// lost, and the survivors send it again. Every input the two survivors
// send to the third node is dropped (as the network loses what is in
// flight to a node that dies, and a sender goes on sending there until it
// sees the node leave, seconds later); then that node crashes. Lost: the
// permit requests of devices living on the survivors to cells the dead
// node owned (they wait in STAGE_WAIT_PERMIT, with no deadline), and the
// task's StartJobs to the devices the dead node owned (their actors
// journaled nothing; the task waits for their outcomes). The recovered
// cells' and devices' Resume cannot repeat what they never journaled: the
// live senders must. The task still ends with every device upgraded once
// and no cell over its budget.
func TestClusterInputsLostWithANode(t *testing.T) {
	c := newClusterRig(t)
	specs := fleet(72, 24, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	ns := c.addNodes(nodeSpec{devices: specs}, nodeSpec{}, nodeSpec{crashable: true})
	a, b, dies := ns[0], ns[1], ns[2]
	c.awaitMembers()
	c.settle()
	trs := map[string]*memtransport.Transport{}
	for _, s := range specs {
		trs[s.ID] = a.tr
	}
	task := ""
	for i := 0; task == ""; i++ {
		if id := fmt.Sprintf("lost-%d", i); a.e.Owner(persistence.KindTask, id) != dies.addr {
			task = id
		}
	}
	// waiting: devices on a survivor whose cell is on the node that dies.
	var waiting []string
	onDies := 0
	for _, s := range specs {
		switch {
		case a.e.Owner(persistence.KindDevice, s.ID) == dies.addr:
			onDies++
		case a.e.Owner(persistence.KindCell, s.CellID) == dies.addr:
			waiting = append(waiting, s.ID)
		}
	}
	if len(waiting) == 0 || onDies == 0 {
		t.Fatalf("placement: %d devices wait for a cell of the dying node, %d devices live there; want both", len(waiting), onDies)
	}
	droppedA, droppedB := a.e.DropRoutedTo(dies.addr), b.e.DropRoutedTo(dies.addr)
	if err := a.e.CreateTask(context.Background(), createTask(task, messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), nil)); err != nil {
		t.Fatal(err)
	}
	inWaitPermit := func() bool {
		for _, id := range waiting {
			j, ok := a.e.DeviceJob(id)
			if !ok {
				j, ok = b.e.DeviceJob(id)
			}
			if !ok || j.Stage != messages.Stage_STAGE_WAIT_PERMIT {
				return false
			}
		}
		return true
	}
	c.runUntil(inWaitPermit, 24*time.Hour)
	if droppedA()+droppedB() == 0 {
		t.Fatal("no input to the dying node was dropped")
	}
	t.Logf("%d devices wait for a permit request that was lost; %d StartJobs and others lost with them (%d devices on the dying node)",
		len(waiting), droppedA()+droppedB(), onDies)
	c.crash(dies)
	c.awaitMembers()
	c.runUntil(func() bool { return c.task(a, task).Status.Final() }, 24*time.Hour)
	c.check(task, specs, trs)
}

// TestClusterInputsPassedToADeadNode: a survivor that sees a node leave
// later than another passes what it gets for that node's former actors on
// to it (by its view, it still owns them), and that is lost too. Here node
// x's view of the members is held back: node a sees the dying node go,
// and a's devices and task send again what was lost (as in
// TestClusterInputsLostWithANode), partly to x, the new owner; x passes it
// on to the dead node, where it is dropped. Once x sees the node leave, it
// delivers again what it passed on there, and the task ends.
func TestClusterInputsPassedToADeadNode(t *testing.T) {
	c := newClusterRig(t)
	specs := fleet(72, 24, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	ns := c.addNodes(nodeSpec{devices: specs}, nodeSpec{}, nodeSpec{crashable: true})
	a, x, dies := ns[0], ns[1], ns[2]
	c.awaitMembers()
	c.settle()
	trs := map[string]*memtransport.Transport{}
	for _, s := range specs {
		trs[s.ID] = a.tr
	}
	task := ""
	for i := 0; task == ""; i++ {
		if id := fmt.Sprintf("passed-%d", i); a.e.Owner(persistence.KindTask, id) == a.addr {
			task = id
		}
	}
	var waiting, onDies []string
	for _, s := range specs {
		switch a.e.Owner(persistence.KindDevice, s.ID) {
		case dies.addr:
			onDies = append(onDies, s.ID)
		case a.addr:
			if a.e.Owner(persistence.KindCell, s.CellID) == dies.addr {
				waiting = append(waiting, s.ID)
			}
		}
	}
	a.e.DropRoutedTo(dies.addr)
	droppedX := x.e.DropRoutedTo(dies.addr)
	if err := a.e.CreateTask(context.Background(), createTask(task, messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), nil)); err != nil {
		t.Fatal(err)
	}
	c.runUntil(func() bool {
		for _, id := range waiting {
			if j, ok := a.e.DeviceJob(id); !ok || j.Stage != messages.Stage_STAGE_WAIT_PERMIT {
				return false
			}
		}
		return true
	}, 24*time.Hour)
	release := x.e.HoldTopology()
	before := droppedX()
	c.crash(dies)
	limit := clock.Real().NewTimer(20 * time.Second)
	defer limit.Stop()
	for {
		ok, tick := a.e.ClusterSettled(2)
		if ok {
			break
		}
		select {
		case <-tick:
		case <-limit.C():
			t.Fatal("node a did not see the crashed node go in 20 s")
		}
	}
	// Through x: the cells of a's waiting devices and the devices of the
	// dead node that x owns now.
	through := 0
	for _, id := range onDies {
		if a.e.Owner(persistence.KindDevice, id) == x.addr {
			through++
		}
	}
	for _, s := range specs {
		if slices.Contains(waiting, s.ID) && a.e.Owner(persistence.KindCell, s.CellID) == x.addr {
			through++
		}
	}
	if through == 0 {
		t.Fatalf("placement: nothing that was lost moves to node x (%d waiting, %d on the dead node)", len(waiting), len(onDies))
	}
	c.settle()
	if ok, _ := x.e.ClusterSettled(3); !ok {
		t.Fatal("node x saw the crashed node go while its view was held")
	}
	if droppedX() == before {
		t.Fatal("node x passed nothing on to the dead node")
	}
	t.Logf("node x passed %d inputs on to the dead node before it saw it go (%d waiting devices and devices of the dead node now on x)", droppedX()-before, through)
	release()
	c.awaitMembers()
	c.runUntil(func() bool { return c.task(a, task).Status.Final() }, 24*time.Hour)
	c.check(task, specs, trs)
	if x.e.PassedAgain() == 0 {
		t.Error("node x delivered nothing again")
	}
}

// TestClusterReadAskedAgainWhenOwnerDies: a download server's
// authorization (a read of the device's job) that went to the node owning
// the device just as that node died is asked again of the device's new
// owner once the node is seen to leave, and holds: the device still runs
// that job. (It failed with "the node left before it answered", and the
// download server refused a live download: the device's job failed.)
func TestClusterReadAskedAgainWhenOwnerDies(t *testing.T) {
	c := newClusterRig(t)
	specs := fleet(24, 2, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	ns := c.addNodes(nodeSpec{devices: specs}, nodeSpec{crashable: true})
	a, dies := ns[0], ns[1]
	c.awaitMembers()
	c.settle()
	if err := a.e.CreateTask(context.Background(), createTask("read", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), nil)); err != nil {
		t.Fatal(err)
	}
	// A device of the dying node with its job running.
	var grant transport.DownloadGrant
	c.runUntil(func() bool {
		for _, s := range specs {
			if a.e.Owner(persistence.KindDevice, s.ID) != dies.addr {
				continue
			}
			if j, ok := dies.e.DeviceJob(s.ID); ok {
				grant = transport.DownloadGrant{DeviceID: s.ID, TaskID: j.TaskID, Attempt: j.Attempt}
				return true
			}
		}
		return false
	}, 24*time.Hour)
	release := a.e.HoldTopology()
	c.crash(dies)
	done := make(chan error, 1)
	go func() { done <- a.e.AuthorizeDownload(context.Background(), grant) }()
	for a.e.AwaitingReplies() == 0 { // the request is on its way to the dead node
		select {
		case err := <-done:
			t.Fatalf("answered before the node was seen to leave: %v", err)
		default:
			runtime.Gosched()
		}
	}
	release()
	if err := <-done; err != nil {
		t.Fatalf("AuthorizeDownload of %s's running job: %v", grant.DeviceID, err)
	}
}

// TestClusterLease: a node's etcd key lives under a lease of
// ClusterConfig.Lease (protoactor's provider asks for a fixed 3 s), or of
// DefaultLease without one.
func TestClusterLease(t *testing.T) {
	srv := etcdtest.Shared(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.URL()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for _, tc := range []struct {
		lease time.Duration
		want  int64
	}{{0, 3}, {7 * time.Second, 7}, {2500 * time.Millisecond, 3}} {
		name := srv.NewCluster("lease")
		e, err := actors.New(actors.Config{Cluster: &actors.ClusterConfig{Etcd: []string{srv.URL()}, Name: name, BindAddr: "127.0.0.1:0", Lease: tc.lease}},
			actors.Deps{Store: memstore.New(), Clock: clocktest.New(epoch), Transport: dropAll{}})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := cli.Get(ctx, "/otafleet/"+name+"/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		leased := 0
		for _, kv := range resp.Kvs {
			if kv.Lease == 0 {
				continue
			}
			leased++
			ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(kv.Lease))
			if err != nil {
				t.Fatal(err)
			}
			if ttl.GrantedTTL != tc.want {
				t.Errorf("lease %v: key %s has a lease of %d s, want %d", tc.lease, kv.Key, ttl.GrantedTTL, tc.want)
			}
		}
		cancel()
		e.Stop()
		if leased == 0 {
			t.Errorf("lease %v: no leased key under /otafleet/%s/ (%d keys)", tc.lease, name, len(resp.Kvs))
		}
	}
}

// TestClusterNoAckReportsTold: a report marked no_ack for a device another
// node owns crosses as a tell (Deliver does not wait for it), and its owner
// credits the sender as its actor steps them. A sender whose tells are lost
// (dropped here) spends its credit, maxNoAckTold, and then sends no_ack
// reports as requests, waited for (a device's flood is held back); once
// nothing was told nor credited for noAckQuiet, what was outstanding is
// taken for lost, and the reports cross as tells again.
func TestClusterNoAckReportsTold(t *testing.T) {
	c := newClusterRig(t)
	ns := c.addNodes(nodeSpec{}, nodeSpec{})
	a, b := ns[0], ns[1]
	c.awaitMembers()
	c.settle()
	dev := ""
	for i := 0; dev == ""; i++ {
		if id := fmt.Sprintf("noack-%d", i); a.e.Owner(persistence.KindDevice, id) == b.addr {
			dev = id
		}
	}
	maxTold, every, quiet := actors.NoAckLimits()
	ctx := context.Background()
	r := 0
	report := func() {
		t.Helper()
		r++
		v := fmt.Sprintf("v%d", r)
		in := &messages.DeviceInput{NoAck: true, Kind: &messages.DeviceInput_VersionReported{VersionReported: &messages.VersionReported{FwVersion: &v}}}
		if err := a.e.Deliver(ctx, dev, in); err != nil {
			t.Fatal(err)
		}
	}
	version := func() string {
		t.Helper()
		v, err := a.e.Device(ctx, dev)
		if err != nil {
			t.Fatal(err)
		}
		return v.State.FwVersion
	}

	// Told and credited.
	for range 2 * every {
		report()
	}
	c.settle()
	if v, want := version(), fmt.Sprintf("v%d", r); v != want {
		t.Fatalf("version %q after %d reports, want %q", v, r, want)
	}
	if told, waited := a.e.NoAckTold(b.addr), a.e.NoAckWaited(); told != 0 || waited != 0 {
		t.Fatalf("after %d reports stepped: %d not credited, %d waited for; want 0, 0", r, told, waited)
	}

	// Lost: the credit runs out, and the next reports are waited for.
	dropped := a.e.DropRoutedTo(b.addr)
	for range maxTold + 5 {
		report()
	}
	if d, w := dropped(), a.e.NoAckWaited(); d != int64(maxTold) || w != 5 {
		t.Fatalf("%d reports dropped, %d waited for; want %d, 5", d, w, maxTold)
	}
	if v, want := version(), fmt.Sprintf("v%d", r); v != want {
		t.Fatalf("version %q after the waited reports, want %q", v, want)
	}

	// After noAckQuiet without a tell or a credit, the lost are forgotten.
	a.e.DropRoutedTo("")
	c.clk.Advance(quiet)
	report()
	c.settle()
	if v, want := version(), fmt.Sprintf("v%d", r); v != want || a.e.NoAckWaited() != 5 {
		t.Fatalf("version %q, %d waited for; want %q told, 5 waited for", v, a.e.NoAckWaited(), want)
	}
	if told := a.e.NoAckTold(b.addr); told != 1 {
		t.Fatalf("%d told and not credited, want 1", told)
	}
}
