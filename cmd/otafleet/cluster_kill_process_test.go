package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors/cell/cellfsm"
	"github.com/otafleet/otafleet/bench"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/internal/etcdtest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// clusterKillDevices is the fleet of TestProcessClusterKillNode: 300
// devices keep it well under a minute on two cores; the 3,000 run
// with -cluster-devices 3000 (a few minutes; see the README's "Cluster"),
// or as a benchmark with `otafleet bench --nodes 3 --devices 3000
// --kill-node 50%`.
var clusterKillDevices = flag.Int("cluster-devices", 300, "TestProcessClusterKillNode: the number of simulated devices (a multiple of 3)")

// TestProcessClusterKillNode is the cluster's crash test with real
// processes: etcd, PostgreSQL and three `serve --cluster` nodes; three
// `otafleet sim` processes whose mixed devices (MQTT, LwM2M FOTA, PCP)
// connect to all three nodes, each given every node's address to fail
// over to; one task per protocol. When half the devices are final, one
// node is killed with SIGKILL. Its grains serve again on the others
// within 10 s of its leaving the membership (its etcd lease expiring),
// its devices reconnect to the others, and the campaign ends with every
// device in exactly one final state, none upgraded twice (the simulators
// count what they installed), and no cell over its budget after any event
// of its journal, whichever node wrote it.
func TestProcessClusterKillNode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	etcd := etcdtest.Shared(t)
	devices := *clusterKillDevices
	if devices < 30 || devices%3 != 0 {
		t.Fatalf("-cluster-devices %d: want a multiple of 3, at least 30", devices)
	}
	// 180 s for the 300 devices CI runs, more for a larger fleet.
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second*time.Duration(max(1, devices/300)))
	defer cancel()
	store := newProcessStore(t, t.TempDir(), true)
	name := etcd.NewCluster("kill")
	// Step timeouts short enough for a quick test (a PCP 0x17 lost with the
	// node waits out T8), yet far longer than the outage a device of the
	// dead node sees: the node leaves the membership 3-5 s after the kill
	// (its lease), its grains serve again within seconds on the survivors,
	// and its LwM2M devices notice it is gone at their next registration
	// update (lifetime 6 s: every 3 s) and register with the next node. A
	// step whose deadline passes during that outage fails (its grain's
	// deadline fires as it resumes): with 10 s, a few did so on a loaded
	// machine (two cores, load average above 20), where the outage
	// stretches; with 30 s none can, since the whole campaign up to the
	// kill takes less.
	var nodes []*clusterNode
	for range 3 {
		nodes = append(nodes, startClusterNode(ctx, t, etcd, name, store, clusterStepArgs("30s")...))
	}
	victim, api := nodes[0], nodes[1] // the clients talk to a node that survives
	token := readToken(t, api.dir)
	awaitMembers(ctx, t, api.api, token, 3)
	// Three simulators of 100 devices; each device starts on one node (by
	// its index) and fails over to the next ones.
	c := startClusterCampaign(ctx, t, api, token, nodes, devices)

	// Kill a node at about half the campaign.
	final := c.awaitFinal(ctx, devices*45/100)
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := clock.Real().Now()
	t.Logf("node %s killed with %d of %d devices final", victim.addr, final, devices)

	// It leaves the membership when its lease expires (3 s); from then on,
	// its grains serve again on the others within 10 s: every task and
	// every device answers on both survivors.
	left := awaitMembers(ctx, t, api.api, token, 2)
	t.Logf("node left the membership %.1fs after the kill", left.Sub(killed).Seconds())
	// The calls run concurrently: one after the other, 606 calls under
	// -race on a loaded machine took 10 s by themselves. A grain serves
	// again when a call to it that succeeds starts.
	var calls []func(context.Context) error
	for _, n := range nodes[1:] {
		cli := bench.NewAPI(n.api, token)
		for _, id := range c.tasks {
			calls = append(calls, func(ctx context.Context) error {
				_, err := cli.Tasks.GetTask(ctx, connect.NewRequest(&v1.GetTaskRequest{TaskId: id}))
				return err
			})
		}
		for _, id := range c.ids() {
			calls = append(calls, func(ctx context.Context) error {
				_, err := cli.Devices.GetDevice(ctx, connect.NewRequest(&v1.GetDeviceRequest{DeviceId: id}))
				return err
			})
		}
	}
	// At least 16 at a time, more for a larger fleet: the check is of the
	// grains, not of how fast one client can walk 6,000 of them (one call
	// in 64 at once).
	served, err := callAllWithin(ctx, left, max(16, len(calls)/64), calls)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("every grain answered again %.1fs after the node left (checked by %.1fs)", served.Sub(left).Seconds(), time.Since(left).Seconds())
	if d := served.Sub(left); d > 10*time.Second {
		t.Errorf("the dead node's grains took %v to serve again, want at most 10s", d)
	}

	// The campaign finishes, every device in exactly one final state, none
	// upgraded twice (by the simulators' count).
	counts := c.awaitDone(ctx, func(processing []string) {
		for _, n := range nodes[1:] {
			_ = n.cmd.Process.Signal(syscall.SIGKILL)
		}
		dumpInFlight(t, store)
		dumpJournals(t, store, processing[:min(len(processing), 4)])
	})
	t.Logf("campaign: %v", counts)
	failed, failReason := c.checkDevices(ctx)
	upgrades := c.stopSims()
	// A device may install and its task still count it failed (its
	// final report went to the dead node, or came after a step's
	// deadline): never the other way round.
	if upgrades < counts["success"] || upgrades > counts["success"]+counts["fail"] {
		t.Errorf("the simulators installed %d upgrades, the tasks count %d successes and %d failures", upgrades, counts["success"], counts["fail"])
	}
	reasons := map[string]int{}
	for _, r := range failReason {
		reasons[r]++
	}
	t.Logf("failure reasons: %v", reasons)
	// Every command lost with the dead node is sent again, by its grain's
	// resumption on a survivor or on the device's registration with
	// another node, within the step's timeout. One is not, by design: a
	// PCP 0x17 that went out through the dead node at the kill (or whose
	// answer died with it) is never sent again, since nothing the device
	// answers tells a lost 0x17 from one it took (devicefsm.Resume), and
	// T8 ends the job. That residue, a few devices at most, is the only
	// failure allowed.
	pcp := map[string]bool{}
	for _, id := range c.fleet.IDs(bench.ProtoPCP) {
		pcp[id] = true
	}
	// The other residue: a device downloading its package from the dead
	// node's download server at the kill sees its download cut, and reports
	// so (FOTA Update Result 4, connection lost, or 7, invalid URI, when it
	// can no longer reach the host); the job ends with that failure, as on
	// one server that dies mid-download.
	victimAddrs := readAddrsJSON(t, victim.dir)
	cut := downloadsCut(t, store, failed, failReason, victimAddrs["coap"], victimAddrs["download"])
	var unexpected []string
	for _, id := range failed {
		switch {
		case pcp[id] && failReason[id] == messages.ReasonText(messages.Reason_REASON_UPDATE_START_TIMEOUT):
		case cut[id]:
		default:
			unexpected = append(unexpected, id)
		}
	}
	if len(cut) > 0 {
		t.Logf("%d devices' downloads from the dead node were cut: %v", len(cut), slices.Sorted(maps.Keys(cut)))
	}
	if len(unexpected) > 0 || len(failed) > devices/20 {
		t.Errorf("%d devices failed (%d not a PCP 0x17 lost with the node): %v", len(failed), len(unexpected), failed)
		dumpJournals(t, store, append(unexpected, failed...)[:min(len(failed), 4)])
	}
	// The dead node's sessions are not left in the store: its devices moved
	// theirs by registering elsewhere, and a survivor drops the rest some
	// seconds after it left (sessionDropGrace).
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		st := getClusterStatus(ctx, t, api.api, token)
		if _, held := st.GetOrphanSessions()[victim.addr]; !held {
			t.Logf("no session of the dead node in the store %.1fs after it left", time.Since(left).Seconds())
			break
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("the dead node's sessions are still in the store: %v", st.GetOrphanSessions())
		}
	}
	for _, n := range nodes[1:] {
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
		if err, lines := n.waitRaw(ctx); err != nil && !thirdPartyRacesOnly(t, err, lines) {
			t.Errorf("node %s, SIGTERM: %v", n.addr, err)
		}
	}
	checkCellJournals(t, store, c.ids())
}

// downloadsCut returns the devices among failed whose failure is a
// download cut (FOTA Update Result 4 or 7) from a package URI on one of
// the dead node's addresses (hosts, host:port), by the last URI their
// journal offered.
func downloadsCut(t *testing.T, store processStore, failed []string, reason map[string]string, hosts ...string) map[string]bool {
	t.Helper()
	cut := map[string]bool{}
	st, err := store.open()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, id := range failed {
		switch reason[id] {
		case messages.ReasonText(messages.Reason_REASON_FW_CONNECTION_LOST), messages.ReasonText(messages.Reason_REASON_FW_INVALID_URI):
		default:
			continue
		}
		uri := ""
		err := st.Load(context.Background(), persistence.Stream{Kind: persistence.KindDevice, ID: id}, 0, func(e persistence.Event) error {
			ev := &messages.DeviceEvent{}
			if err := proto.Unmarshal(e.Payload, ev); err != nil {
				return err
			}
			if o := ev.GetDownloadOffered(); o != nil {
				uri = o.GetUri()
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		u, err := url.Parse(uri)
		if err != nil || u.Host == "" {
			continue
		}
		if slices.Contains(hosts, u.Host) {
			cut[id] = true
		}
	}
	return cut
}

// checkCellJournals folds the journal of every cell the devices asked a
// slot of, as a cell actor's recovery does, and checks the budget after
// each event, whichever node wrote it (as the actors' cluster tests do).
func checkCellJournals(t *testing.T, store processStore, devices []string) {
	t.Helper()
	st, err := store.open()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	cells := map[string]bool{}
	for _, id := range devices {
		err := st.Load(ctx, persistence.Stream{Kind: persistence.KindDevice, ID: id}, 0, func(e persistence.Event) error {
			ev := &messages.DeviceEvent{}
			if err := proto.Unmarshal(e.Payload, ev); err != nil {
				return err
			}
			if c := ev.GetPermitRequested().GetCellId(); c != "" {
				cells[c] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	cfg := cellfsm.DefaultConfig()
	most := uint32(0)
	for id := range cells {
		s := cellfsm.New(id)
		err := st.Load(ctx, persistence.Stream{Kind: persistence.KindCell, ID: id}, 0, func(ev persistence.Event) error {
			e := &messages.CellEvent{}
			if err := proto.Unmarshal(ev.Payload, e); err != nil {
				return err
			}
			s = cellfsm.Evolve(s, e)
			if err := s.Check(cfg); err != nil || s.Used() > cfg.Budget {
				return fmt.Errorf("cell %s over budget after event %d: used %d: %v", id, ev.Seq, s.Used(), err)
			}
			most = max(most, s.Used())
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	}
	if len(cells) == 0 || most == 0 {
		t.Errorf("%d cells asked, most units held %d: no grant journaled", len(cells), most)
	}
	t.Logf("%d cells, at most %d of %d units held", len(cells), most, cfg.Budget)
}

// rotate is s starting at its k-th element.
func rotate(s []string, k int) []string {
	k %= len(s)
	return append(append([]string(nil), s[k:]...), s[:k]...)
}

func readAddrsJSON(t *testing.T, dir string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "addrs.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// getClusterStatus asks api for GetClusterStatus.
func getClusterStatus(ctx context.Context, t *testing.T, api, token string) *v1.GetClusterStatusResponse {
	t.Helper()
	res, err := clusterClient(api, token).GetClusterStatus(ctx, connect.NewRequest(&v1.GetClusterStatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	return res.Msg
}

func clusterClient(api, token string) otafleetv1connect.ClusterServiceClient {
	o := clientOpts{api: api, token: token}
	c, err := o.connect()
	if err != nil {
		panic(err)
	}
	return c.cluster
}

// awaitMembers polls api's cluster status until it lists n members, and
// returns when it did.
func awaitMembers(ctx context.Context, t *testing.T, api, token string, n int) time.Time {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		st := getClusterStatus(ctx, t, api, token)
		if len(st.GetNodes()) == n {
			return clock.Real().Now()
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("cluster status never listed %d members: %v", n, st)
		}
	}
}

// callWithin retries call (each try bounded by 2 s) until it succeeds;
// it fails t when 10 s have passed since from.
// callAllWithin runs calls, workers at a time, each until it succeeds
// (callWithin), and returns when the last of them started the call that
// succeeded.
func callAllWithin(ctx context.Context, from time.Time, workers int, calls []func(context.Context) error) (served time.Time, err error) {
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		next int
	)
	served = from
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if next == len(calls) || err != nil {
					mu.Unlock()
					return
				}
				call := calls[next]
				next++
				mu.Unlock()
				at, cerr := callWithin(ctx, from, call)
				mu.Lock()
				if cerr != nil && err == nil {
					err = cerr
				}
				if at.After(served) {
					served = at
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return served, err
}

// callWithin calls call until it succeeds, every 100 ms, and returns when
// the call that succeeded started; an error once 10 s have passed since
// from.
func callWithin(ctx context.Context, from time.Time, call func(context.Context) error) (time.Time, error) {
	for {
		start := clock.Real().Now()
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := call(cctx)
		cancel()
		if err == nil {
			return start, nil
		}
		if time.Since(from) > 10*time.Second {
			return time.Time{}, fmt.Errorf("not answering 10s after the node left: %w", err)
		}
		tick := time.NewTimer(100 * time.Millisecond)
		select {
		case <-tick.C:
		case <-ctx.Done():
			tick.Stop()
			return time.Time{}, ctx.Err()
		}
	}
}

// progress sums the tasks' final devices; counts holds success, fail,
// stopped and done (tasks finished).
func progress(ctx context.Context, t *testing.T, cli *bench.API, tasks []string) (final int, counts map[string]int) {
	t.Helper()
	counts = map[string]int{}
	for _, id := range tasks {
		res, err := cli.Tasks.GetTask(ctx, connect.NewRequest(&v1.GetTaskRequest{TaskId: id}))
		if err != nil {
			t.Logf("GetTask %s: %v", id, err)
			continue
		}
		p := res.Msg.GetTask().GetProgress()
		counts["success"] += int(p.GetSuccess())
		counts["fail"] += int(p.GetFail())
		counts["stopped"] += int(p.GetStopped())
		if messages.TaskStatus(res.Msg.GetTask().GetStatus()).Final() {
			counts["done"]++
		}
	}
	return counts["success"] + counts["fail"] + counts["stopped"], counts
}

// simProc is a child `otafleet sim`.
type simProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	lines  chan string
	report string
}

func startSimProc(t *testing.T, dir string, args ...string) *simProc {
	t.Helper()
	s := &simProc{t: t, lines: make(chan string, 64), report: filepath.Join(t.TempDir(), "sim.json")}
	s.cmd = exec.Command(os.Args[0], append([]string{"sim", "--data-dir", dir, "--report", s.report}, args...)...)
	s.cmd.Env = append(os.Environ(), "OTAFLEET_TEST_MAIN=1")
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s.cmd.Stderr = os.Stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	t.Cleanup(func() { _ = s.cmd.Process.Kill(); _ = s.cmd.Wait() })
	return s
}

func (s *simProc) awaitReady(ctx context.Context) {
	s.t.Helper()
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				s.t.Fatal("sim exited before its devices were up")
			}
			if strings.HasPrefix(l, "ready ") {
				return
			}
		case <-ctx.Done():
			s.t.Fatal("sim: devices not up")
		}
	}
}

// stop interrupts the simulator and reads its report.
func (s *simProc) stop() bench.SimReport {
	s.t.Helper()
	_ = s.cmd.Process.Signal(os.Interrupt)
	for range s.lines {
	}
	if err := s.cmd.Wait(); err != nil {
		s.t.Errorf("sim: %v", err)
	}
	var rep bench.SimReport
	b, err := os.ReadFile(s.report)
	if err == nil {
		err = json.Unmarshal(b, &rep)
	}
	if err != nil {
		s.t.Fatalf("sim report: %v", err)
	}
	return rep
}
