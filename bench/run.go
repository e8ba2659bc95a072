package bench

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// Options describe one bench run.
type Options struct {
	// Exe is the otafleet binary; the server and the simulators run as
	// `Exe serve` and `Exe sim`, separate processes. Env is added to their
	// environment.
	Exe string
	Env []string
	// DataDir is the server's data folder: "" makes a new temporary one,
	// removed after the run unless Keep. A given folder must be empty or
	// absent.
	DataDir string
	Keep    bool

	Protocol       string // mqtt, lwm2m, pcp or mixed
	Devices        int
	Cells          int
	Coverage       string
	FailRate       float64
	ThinkTime      time.Duration
	BytesPerSecond int64
	// DropRate: each LwM2M device loses this share of the datagrams it
	// receives (sim --drop-rate).
	DropRate     float64
	PackageBytes int
	DTLS         bool
	// KillAt in (0, 1): when this share of the devices reached a final
	// state the server is killed with SIGKILL and started again.
	KillAt float64
	// Retries is each task's retry_count (0 to 5): how often a failed device
	// runs its upgrade again, a minute after the failure (the shortest
	// retry_interval_minutes).
	Retries int
	// SimProcs is how many simulator processes share the devices (0: one
	// per PerSim devices).
	SimProcs int
	PerSim   int
	// IdleOnly stops after measuring the registered, connected, idle fleet.
	IdleOnly bool
	// IdleSettle is how long the fleet stays idle before its memory is
	// measured (say past the server's --passivate-after, so that device
	// actors woken by the registrations have passivated); 0 measures at
	// once.
	IdleSettle time.Duration
	// Timeout bounds the task (default 30 minutes).
	Timeout time.Duration
	// ServeArgs are added to the server's command line; SimLogLevel is the
	// simulators' --log-level (default warn).
	ServeArgs   []string
	SimLogLevel string
	// SimCPUProfile, when set, is the file the first simulator process
	// writes its CPU profile to.
	SimCPUProfile string
	// StoreDSN is the PostgreSQL store the server's ServeArgs name (its
	// --store), where the report counts the journal's events; "": the
	// server's Pebble store in DataDir.
	StoreDSN string
	// StorePID is the process ID of the PostgreSQL server (its postmaster)
	// of StoreDSN when bench started it: the report adds the server's CPU
	// during the task (StoreTaskCPUSeconds), so that the CPU per upgrade
	// compares with Pebble's, which is in the engine's process. 0: none.
	StorePID int
	// Nodes > 0 runs the server as a cluster of that many `serve --cluster`
	// nodes on Etcd (host:port) under ClusterName, on the PostgreSQL store
	// of ServeArgs (StoreDSN): the simulators get every node's addresses,
	// the API client talks to the first node, and the report adds each
	// node's figures (Report.Nodes) and sums their CPU. 0: one plain server.
	Nodes       int
	Etcd        string
	ClusterName string
	// EtcdPID is the process whose tree is etcd (etcdserver.Server.PID):
	// the report adds etcd's CPU during the task apart. 0: none.
	EtcdPID int
	// KillNode in (0, 1), with Nodes >= 2: when this share of the devices
	// reached a final state the last node (never the first, which the API
	// client uses) is killed with SIGKILL; the run goes on with the others.
	KillNode float64
	// CPUProfile, when set, is the file the server's CPU profile of the
	// tasks' run is written to (pprof format, from the first task's creation
	// until the tasks end; with KillAt, of both server processes).
	CPUProfile string
	// Progress receives one line every few seconds; nil: none.
	Progress io.Writer
	// Command is the command line, for the report.
	Command string
}

func (o *Options) validate() error {
	var errs []error
	if _, err := Protocols(o.Protocol); err != nil {
		errs = append(errs, err)
	}
	if o.Devices < 1 {
		errs = append(errs, fmt.Errorf("--devices %d: want at least 1", o.Devices))
	}
	if o.Cells < 1 {
		errs = append(errs, fmt.Errorf("--cells %d: want at least 1", o.Cells))
	}
	if o.PackageBytes < 1 || o.PackageBytes > 8<<20 {
		errs = append(errs, fmt.Errorf("--package-size %d: want 1 byte to 8 MiB", o.PackageBytes))
	}
	if !(o.DropRate >= 0 && o.DropRate <= 1) {
		errs = append(errs, fmt.Errorf("--drop-rate %v: want 0 to 1", o.DropRate))
	}
	if o.KillAt < 0 || o.KillAt >= 1 {
		errs = append(errs, fmt.Errorf("--kill-at %v: want a share below 100%%", o.KillAt))
	}
	// The server bench starts runs the task machine with its default limits.
	if maxRetries := taskfsm.DefaultConfig().MaxRetryCount; o.Retries < 0 || o.Retries > maxRetries {
		errs = append(errs, fmt.Errorf("--retries %d: want 0 to %d", o.Retries, maxRetries))
	}
	if o.Nodes < 0 {
		errs = append(errs, fmt.Errorf("--nodes %d: want at least 1", o.Nodes))
	}
	if o.Nodes > 0 && (o.StoreDSN == "" || o.Etcd == "" || o.ClusterName == "") {
		errs = append(errs, errors.New("a cluster run needs a PostgreSQL store, etcd and a cluster name"))
	}
	if o.KillNode < 0 || o.KillNode >= 1 {
		errs = append(errs, fmt.Errorf("--kill-node %v: want a share below 100%%", o.KillNode))
	}
	if o.KillNode > 0 && o.Nodes < 2 {
		errs = append(errs, errors.New("--kill-node needs --nodes 2 or more: a node must survive"))
	}
	if o.Nodes > 0 && o.KillAt > 0 {
		errs = append(errs, errors.New("--kill-at restarts a single server: not with --nodes"))
	}
	if o.Exe == "" {
		errs = append(errs, errors.New("no otafleet binary to run"))
	}
	return errors.Join(errs...)
}

// benchRun is the state of one bench run; [Run] builds it and calls its
// execute.
type benchRun struct {
	// authMu guards addrs and token while the server restarts (apiAuth).
	authMu  sync.Mutex
	o       Options
	clk     clock.Clock
	dir     string
	addrs   map[string]string
	args    []string // the server's arguments
	server  *child
	api     *API
	token   string
	fleet   Fleet
	protos  []string
	rep     *Report
	metrics http.Client
	// peers are the cluster's nodes after the first (r.server), with
	// Options.Nodes.
	peers []*peer
	// violSeen is each node's violation counter as last read (by API
	// address), syncedSeen its synced appends.
	violSeen   map[string]int
	syncedSeen map[string]int
	// etcdCPU0 is etcd's CPU (Options.EtcdPID) at the first task's creation.
	etcdCPU0 time.Duration
	// storeCPU0 is the PostgreSQL server's CPU (Options.StorePID) at the
	// first task's creation.
	storeCPU0 time.Duration
}

// Run starts a server and simulators as separate processes, registers the
// fleet, uploads a package per protocol, runs the tasks to their end and
// returns the report. The report is returned with an error too when the run
// got far enough to measure something.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.PerSim <= 0 {
		o.PerSim = 5000
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Minute
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	r := &benchRun{o: o, clk: clock.Real(), violSeen: map[string]int{}, syncedSeen: map[string]int{}}
	r.protos, _ = Protocols(o.Protocol)
	r.rep = &Report{
		Devices: o.Devices, Mix: map[string]int{}, Cells: o.Cells, Coverage: o.Coverage, Coverages: map[string]int{},
		FailRate: o.FailRate, PackageBytes: o.PackageBytes, Retries: o.Retries, Failures: map[string]int{}, FailuresByProtocol: map[string]map[string]int{}, Problems: []string{},
		Machine: Machine{CPUs: runtime.NumCPU(), CPUModel: cpuModel(), OS: runtime.GOOS + "/" + runtime.GOARCH, GoVersion: runtime.Version()},
		Command: o.Command,
	}
	r.fleet = Fleet{Protocols: r.protos, Devices: o.Devices, Prefix: "bench-", Cells: o.Cells, Coverage: o.Coverage, FailRate: o.FailRate, SecretSeed: "otafleet-sim"}
	if err := r.fleet.Validate(); err != nil {
		return nil, err
	}
	for n := range o.Devices {
		d := r.fleet.Device(n)
		r.rep.Mix[d.Protocol]++
		if d.Coverage != "" {
			r.rep.Coverages[d.Coverage]++
		}
	}
	if err := r.setup(); err != nil {
		return nil, err
	}
	defer r.cleanup()
	err := r.execute(ctx)
	if err != nil {
		r.rep.Problems = append(r.rep.Problems, "the run did not finish: "+err.Error())
	}
	if r.server != nil {
		r.stopServer()
	}
	r.stopPeers()
	count := func() (int64, error) { return countEvents(filepath.Join(r.dir, "store")) }
	if o.StoreDSN != "" {
		count = func() (int64, error) { return countEventsPostgres(ctx, o.StoreDSN) }
	}
	if n, cerr := count(); cerr == nil {
		r.rep.EventsJournaled = n
		if done := r.rep.Succeeded + r.rep.Failed; done > 0 {
			r.rep.EventsPerUpgrade = float64(n) / float64(done)
		}
	} else if err == nil {
		err = fmt.Errorf("counting the journal's events: %w", cerr)
	}
	if o.Keep {
		r.rep.DataDir = r.dir
	}
	return r.rep, err
}

func (r *benchRun) setup() error {
	dir := r.o.DataDir
	if dir == "" {
		d, err := os.MkdirTemp("", "otafleet-bench-")
		if err != nil {
			return err
		}
		dir = d
	} else {
		ents, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if len(ents) > 0 {
			return fmt.Errorf("--data-dir %s is not empty: the bench needs a fresh server", dir)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	r.dir = dir
	// Fixed ports, so that a restarted server is where the devices left it.
	tcp := func() (string, error) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		defer l.Close()
		return l.Addr().String(), nil
	}
	udp := func() (string, error) {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		defer c.Close()
		return c.LocalAddr().String(), nil
	}
	if r.o.Nodes > 0 {
		// A cluster's nodes are never restarted: they listen on ports the
		// kernel picks (no race with other programs for a port picked and
		// released) and bench reads them from addrs.json once they serve.
		tcp = func() (string, error) { return "127.0.0.1:0", nil }
		udp = tcp
	}
	var errs [5]error
	a := map[string]string{}
	a["api"], errs[0] = tcp()
	a["mqtt"], errs[1] = tcp()
	a["download"], errs[2] = tcp()
	a["coap"], errs[3] = udp()
	if r.o.DTLS {
		a["coaps"], errs[4] = udp()
	}
	if err := errors.Join(errs[:]...); err != nil {
		return fmt.Errorf("picking ports: %w", err)
	}
	r.addrs = a
	r.args = append([]string{"serve", "--data-dir", dir, "--api-addr", a["api"], "--mqtt-addr", a["mqtt"],
		"--download-addr", a["download"], "--coap-addr", a["coap"], "--coaps-addr", a["coaps"],
		"--log-format", "json", "--log-level", "warn"}, r.o.ServeArgs...)
	if r.o.Nodes == 0 {
		return nil
	}
	// A cluster: every node on etcd under one name, each with its own data
	// folder (node 0's is dir, where the simulators read addrs.json) and
	// ports.
	clusterArgs := func() ([]string, error) {
		nodeAddr, err := freeTCP()
		return []string{"--cluster", "etcd://" + r.o.Etcd, "--cluster-name", r.o.ClusterName, "--node-addr", nodeAddr}, err
	}
	ca, err := clusterArgs()
	if err != nil {
		return fmt.Errorf("picking ports: %w", err)
	}
	r.args = append(r.args, ca...)
	r.rep.Nodes = []NodeReport{{API: a["api"], NodeAddr: ca[len(ca)-1]}}
	for k := 1; k < r.o.Nodes; k++ {
		p := &peer{name: fmt.Sprintf("serve-node-%d", k), dir: filepath.Join(dir, fmt.Sprintf("node-%d", k)), addrs: map[string]string{}}
		if err := os.MkdirAll(p.dir, 0o700); err != nil {
			return err
		}
		var errs [6]error
		p.addrs["api"], errs[0] = tcp()
		p.addrs["mqtt"], errs[1] = tcp()
		p.addrs["download"], errs[2] = tcp()
		p.addrs["coap"], errs[3] = udp()
		if r.o.DTLS {
			p.addrs["coaps"], errs[4] = udp()
		}
		ca, errs[5] = clusterArgs()
		if err := errors.Join(errs[:]...); err != nil {
			return fmt.Errorf("picking ports: %w", err)
		}
		p.args = append(append([]string{"serve", "--data-dir", p.dir, "--api-addr", p.addrs["api"], "--mqtt-addr", p.addrs["mqtt"],
			"--download-addr", p.addrs["download"], "--coap-addr", p.addrs["coap"], "--coaps-addr", p.addrs["coaps"],
			"--log-format", "json", "--log-level", "warn"}, r.o.ServeArgs...), ca...)
		r.peers = append(r.peers, p)
		r.rep.Nodes = append(r.rep.Nodes, NodeReport{API: p.addrs["api"], NodeAddr: ca[len(ca)-1]})
	}
	return nil
}

// freeTCP picks a free TCP port of 127.0.0.1 (a cluster node's protoactor
// remote address, which it advertises as given).
func freeTCP() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// readAddrs reads the addresses a server listens on from DIR/addrs.json.
func readAddrs(dir string) (map[string]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "addrs.json"))
	if err != nil {
		return nil, err
	}
	var a map[string]string
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, fmt.Errorf("%s/addrs.json: %w", dir, err)
	}
	return a, nil
}

// peer is a cluster node after the first.
type peer struct {
	name  string
	dir   string
	args  []string
	addrs map[string]string
	c     *child
	cpu0  time.Duration // its CPU at the first task's creation
	// taskCPU is its CPU during the task, once it ended or was killed.
	taskCPU time.Duration
}

// killPeer kills the cluster's last node with SIGKILL, done devices being
// final, and notes its figures; the run goes on with the others.
func (r *benchRun) killPeer(done int) error {
	k := len(r.peers) - 1
	p := r.peers[k]
	cpu, err := cpuOf(p.c.cmd.Process.Pid)
	if err != nil {
		return err
	}
	p.taskCPU = cpu - p.cpu0
	r.noteCells(context.Background())
	n := &r.rep.Nodes[k+1]
	r.progress("%d/%d final: killing node %s with SIGKILL", done, r.o.Devices, n.NodeAddr)
	_ = p.c.cmd.Process.Kill()
	<-p.c.done
	r.addUsage(p.c)
	cpuAll, rss := usageOf(p.c.cmd)
	n.CPUSeconds, n.PeakRSSBytes, n.Killed = cpuAll.Seconds(), rss, true
	p.c = nil
	r.rep.KilledNode = n.NodeAddr
	r.rep.KilledAtFinal = done
	return nil
}

// nodeRef is one server process of the run, as the report reads it.
type nodeRef struct {
	api string
	pid int
}

// nodes lists the running server processes: the first (r.server), then
// the cluster's other nodes.
func (r *benchRun) nodes() []nodeRef {
	var out []nodeRef
	if r.server != nil {
		out = append(out, nodeRef{r.addrs["api"], r.server.cmd.Process.Pid})
	}
	for _, p := range r.peers {
		if p.c != nil {
			out = append(out, nodeRef{p.addrs["api"], p.c.cmd.Process.Pid})
		}
	}
	return out
}

// startPeers starts the cluster's nodes after the first, one after the
// other, each waited for until it serves.
func (r *benchRun) startPeers(ctx context.Context) error {
	for k, p := range r.peers {
		os.Remove(filepath.Join(p.dir, "addrs.json"))
		c, err := r.startChild(p.name, p.args...)
		if err != nil {
			return err
		}
		p.c = c
		if err := r.awaitServing(ctx, c, p.dir, p.addrs); err != nil {
			return err
		}
		r.rep.Nodes[k+1].API = p.addrs["api"]
	}
	if len(r.peers) > 0 {
		r.progress("%d cluster nodes serving", r.o.Nodes)
	}
	return nil
}

// stopPeers ends the cluster's other nodes as stopServer ends the first.
func (r *benchRun) stopPeers() {
	for k, p := range r.peers {
		if p.c == nil {
			continue
		}
		c := p.c
		p.c = nil
		r.stop(c)
		r.addUsage(c)
		cpu, rss := usageOf(c.cmd)
		r.rep.Nodes[k+1].CPUSeconds = cpu.Seconds()
		r.rep.Nodes[k+1].PeakRSSBytes = rss
	}
}

func (r *benchRun) cleanup() {
	if !r.o.Keep && r.o.DataDir == "" {
		os.RemoveAll(r.dir)
	}
}

func (r *benchRun) progress(format string, a ...any) {
	if r.o.Progress != nil {
		fmt.Fprintf(r.o.Progress, "bench: "+format+"\n", a...)
	}
}

func (r *benchRun) sleep(ctx context.Context, d time.Duration) error {
	t := r.clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}

// execute runs the phases of one bench run in order: the server, the
// products, the simulators with their fleet (idle memory measured before
// and after), then, unless IdleOnly, the tasks watched to their end. Run
// sets the run up before and counts the journal after.
func (r *benchRun) execute(ctx context.Context) error {
	if err := r.startServer(ctx); err != nil {
		return err
	}
	if err := r.startPeers(ctx); err != nil {
		return err
	}
	products, err := r.createProducts(ctx)
	if err != nil {
		return err
	}
	baseHeap, baseRSS, err := r.idleMemory(ctx)
	if err != nil {
		return err
	}
	baseG, err := r.goroutines(ctx)
	if err != nil {
		return err
	}

	// The simulators register their devices and connect them.
	t0 := r.clk.Now()
	sims, err := r.startSims(ctx, products)
	defer func() {
		rep := stopSims(sims, r.clk)
		r.rep.SimProcesses = len(sims)
		for _, s := range rep.children {
			cpu, rss := usageOf(s.cmd)
			r.rep.SimCPUSeconds += cpu.Seconds()
			r.rep.SimPeakRSSBytes = max(r.rep.SimPeakRSSBytes, rss)
		}
		r.rep.DevicesUpgradedTwice = rep.UpgradedTwice
		if rep.UpgradedTwice > 0 {
			r.rep.Problems = append(r.rep.Problems, fmt.Sprintf("%d devices upgraded twice: %s", rep.UpgradedTwice, strings.Join(rep.TwiceIDs, " ")))
		}
		if rep.err != nil {
			r.rep.Problems = append(r.rep.Problems, "simulator: "+rep.err.Error())
		}
	}()
	if err != nil {
		return err
	}
	r.rep.RegisterConnectSeconds = r.clk.Since(t0).Seconds()
	r.progress("%d devices registered and connected in %.1f s", r.o.Devices, r.rep.RegisterConnectSeconds)
	if r.o.IdleSettle > 0 {
		r.progress("idle for %v before measuring", r.o.IdleSettle)
		t := r.clk.NewTimer(r.o.IdleSettle)
		select {
		case <-t.C():
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
	heap, rss, err := r.idleMemory(ctx)
	if err != nil {
		return err
	}
	r.rep.IdleHeapBytesPerDevice = float64(heap-baseHeap) / float64(r.o.Devices)
	r.rep.IdleRSSBytesPerDevice = float64(rss-baseRSS) / float64(r.o.Devices)
	g, err := r.goroutines(ctx)
	if err != nil {
		return err
	}
	r.rep.IdleGoroutinesPerDevice = float64(g-baseG) / float64(r.o.Devices)
	r.progress("idle fleet: %.0f B heap, %.0f B RSS per device", r.rep.IdleHeapBytesPerDevice, r.rep.IdleRSSBytesPerDevice)
	if r.o.IdleOnly {
		return nil
	}
	// The clock and the server's CPU count from the first task's creation.
	start := r.clk.Now()
	cpu0, err := cpuOf(r.server.cmd.Process.Pid)
	if err != nil {
		return err
	}
	for _, p := range r.peers {
		if p.cpu0, err = cpuOf(p.c.cmd.Process.Pid); err != nil {
			return err
		}
	}
	if r.o.StorePID != 0 {
		if r.storeCPU0, err = treeCPUOf(r.o.StorePID); err != nil {
			return fmt.Errorf("the PostgreSQL server's CPU: %w", err)
		}
	}
	if r.o.EtcdPID != 0 {
		if r.etcdCPU0, err = treeCPUOf(r.o.EtcdPID); err != nil {
			return fmt.Errorf("etcd's CPU: %w", err)
		}
	}
	var prof *cpuProfiler
	if r.o.CPUProfile != "" {
		prof = r.startCPUProfile(ctx)
	}
	tasks, err := r.createTasks(ctx, products)
	if err == nil {
		err = r.watch(ctx, tasks, start, cpu0)
	}
	if prof != nil {
		if perr := prof.stop(r.o.CPUProfile); perr != nil {
			r.rep.Problems = append(r.rep.Problems, "--cpu-profile: "+perr.Error())
		}
	}
	return err
}

// child is a process of the run.
type child struct {
	name  string
	cmd   *exec.Cmd
	lines chan string // its standard output, line by line
	done  chan struct{}
	err   error // once done
	log   string
}

func (r *benchRun) startChild(name string, args ...string) (*child, error) {
	logPath := filepath.Join(r.dir, name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(r.o.Exe, args...)
	cmd.Env = append(os.Environ(), r.o.Env...)
	cmd.Stderr = lf
	out, err := cmd.StdoutPipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, lines: make(chan string, 64), done: make(chan struct{}), log: logPath}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case c.lines <- sc.Text():
			default: // nobody reads: drop
			}
		}
		c.err = cmd.Wait()
		lf.Close()
		close(c.done)
	}()
	return c, nil
}

// tail returns the last lines of the child's log, for an error message.
func (c *child) tail() string {
	b, err := os.ReadFile(c.log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-5):], "\n")
}

func (r *benchRun) startServer(ctx context.Context) error {
	os.Remove(filepath.Join(r.dir, "addrs.json"))
	c, err := r.startChild("serve", r.args...)
	if err != nil {
		return err
	}
	r.server = c
	addrs := maps.Clone(r.addrs)
	if err := r.awaitServing(ctx, c, r.dir, addrs); err != nil {
		return err
	}
	tok, err := os.ReadFile(filepath.Join(r.dir, "api-token"))
	if err != nil {
		return err
	}
	// The CPU profiler reads the address and token while a killed server
	// restarts (--kill-at).
	r.authMu.Lock()
	defer r.authMu.Unlock()
	r.addrs = addrs
	if len(r.rep.Nodes) > 0 {
		r.rep.Nodes[0].API = r.addrs["api"]
	}
	r.token = strings.TrimSpace(string(tok))
	r.api = NewAPI(r.addrs["api"], r.token)
	return nil
}

// apiAuth is the server's API address and token, for a goroutine that
// runs while the server restarts.
func (r *benchRun) apiAuth() (addr, token string) {
	r.authMu.Lock()
	defer r.authMu.Unlock()
	return r.addrs["api"], r.token
}

// awaitServing waits until the server c, with data folder dir and API
// address api, wrote its API token and addresses and reports SERVING; a
// cluster node's addresses (a, listened on port 0) are updated to the ones
// of its addrs.json.
func (r *benchRun) awaitServing(ctx context.Context, c *child, dir string, a map[string]string) error {
	deadline := r.clk.Now().Add(2 * time.Minute)
	for {
		select {
		case <-c.done:
			return fmt.Errorf("%s exited: %v\n%s", c.name, c.err, c.tail())
		default:
		}
		if r.clk.Now().After(deadline) {
			return fmt.Errorf("%s did not answer within 2 minutes (log %s)", c.name, c.log)
		}
		if r.o.Nodes > 0 {
			if got, err := readAddrs(dir); err == nil {
				for _, k := range []string{"api", "mqtt", "coap", "coaps", "download"} {
					a[k] = got[k]
				}
			}
		}
		if _, err := os.Stat(filepath.Join(dir, "api-token")); err == nil && a["api"] != "127.0.0.1:0" && r.healthy(ctx, dir, a["api"]) {
			return nil
		}
		if err := r.sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

func (r *benchRun) healthy(ctx context.Context, dir, api string) bool {
	if _, err := os.Stat(filepath.Join(dir, "addrs.json")); err != nil {
		return false
	}
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(hctx, "POST", "http://"+api+"/grpc.health.v1.Health/Check", strings.NewReader("{}"))
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.metrics.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode == 200 && strings.Contains(string(b), "SERVING")
}

// stopServer ends the server with SIGTERM (SIGKILL after a minute) and adds
// its CPU time and peak RSS to the report.
func (r *benchRun) stopServer() {
	c := r.server
	r.server = nil
	r.stop(c)
	r.addUsage(c)
	if len(r.rep.Nodes) > 0 {
		cpu, rss := usageOf(c.cmd)
		r.rep.Nodes[0].CPUSeconds = cpu.Seconds()
		r.rep.Nodes[0].PeakRSSBytes = rss
	}
}

// stop ends a server with SIGTERM (SIGKILL after a minute).
func (r *benchRun) stop(c *child) {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	t := r.clk.NewTimer(time.Minute)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C():
		_ = c.cmd.Process.Kill()
		<-c.done
		r.rep.Problems = append(r.rep.Problems, c.name+" did not stop within a minute of SIGTERM")
	}
}

func (r *benchRun) addUsage(c *child) {
	cpu, rss := usageOf(c.cmd)
	r.rep.EngineCPUSeconds += cpu.Seconds()
	r.rep.EnginePeakRSSBytes = max(r.rep.EnginePeakRSSBytes, rss)
}

func (r *benchRun) createProducts(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	for _, p := range r.protos {
		req := &v1.CreateProductRequest{Name: "bench " + p, Protocol: v1.Protocol_PROTOCOL_LWM2M}
		switch p {
		case ProtoMQTT:
			req.Protocol = v1.Protocol_PROTOCOL_MQTT
		case ProtoPCP:
			sp := v1.SoftwareProtocol_SOFTWARE_PROTOCOL_PCP
			req.SoftwareProtocol = &sp
		}
		resp, err := r.api.Products.CreateProduct(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, fmt.Errorf("creating the %s product: %w", p, err)
		}
		out[p] = resp.Msg.GetProduct().GetProductId()
	}
	return out, nil
}

// idleMemory returns the servers' heap after a garbage collection and
// their RSS, summed over the cluster's nodes.
func (r *benchRun) idleMemory(ctx context.Context) (heap, rss int64, err error) {
	for _, n := range r.nodes() {
		h, s, err := r.idleMemoryOf(ctx, n)
		if err != nil {
			return 0, 0, err
		}
		heap, rss = heap+h, rss+s
	}
	return heap, rss, nil
}

// idleMemoryOf returns one server's heap after a garbage collection and
// its RSS.
func (r *benchRun) idleMemoryOf(ctx context.Context, n nodeRef) (heap, rss int64, err error) {
	hctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(hctx, "GET", "http://"+n.api+"/debug/pprof/heap?gc=1&debug=1", nil)
	req.Header.Set("Authorization", "Bearer "+r.token)
	resp, err := r.metrics.Do(req)
	if err != nil {
		return 0, 0, fmt.Errorf("reading the server's heap: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return 0, 0, fmt.Errorf("reading the server's heap: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "# HeapAlloc = "); ok {
			heap, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	if heap == 0 {
		return 0, 0, errors.New("the server's heap profile carries no HeapAlloc")
	}
	rss, _, err = memOf(n.pid)
	return heap, rss, err
}

// goroutines returns the number of the servers' goroutines, summed over
// the cluster's nodes.
func (r *benchRun) goroutines(ctx context.Context) (int, error) {
	total := 0
	for _, n := range r.nodes() {
		g, err := r.goroutinesOf(ctx, n.api)
		if err != nil {
			return 0, err
		}
		total += g
	}
	return total, nil
}

// goroutinesOf returns the number of one server's goroutines.
func (r *benchRun) goroutinesOf(ctx context.Context, api string) (int, error) {
	gctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(gctx, "GET", "http://"+api+"/debug/pprof/goroutine?debug=1", nil)
	req.Header.Set("Authorization", "Bearer "+r.token)
	resp, err := r.metrics.Do(req)
	if err != nil {
		return 0, fmt.Errorf("reading the server's goroutines: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("reading the server's goroutines: %s", resp.Status)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if v, ok := strings.CutPrefix(strings.TrimSpace(line), "goroutine profile: total "); ok && err == nil {
		return strconv.Atoi(v)
	}
	return 0, fmt.Errorf("reading the server's goroutines: unexpected first line %q", line)
}

func (r *benchRun) simCount() int {
	if r.o.SimProcs > 0 {
		return min(r.o.SimProcs, r.o.Devices)
	}
	return (r.o.Devices + r.o.PerSim - 1) / r.o.PerSim
}

func (r *benchRun) startSims(ctx context.Context, products map[string]string) ([]*child, error) {
	n := r.simCount()
	var ps []string
	for _, p := range r.protos {
		ps = append(ps, products[p])
	}
	var sims []*child
	per := (r.o.Devices + n - 1) / n
	for k := range n {
		first := k * per
		count := min(per, r.o.Devices-first)
		if count <= 0 {
			break
		}
		args := []string{"sim", "--data-dir", r.dir, "--protocol", r.o.Protocol, "--devices", strconv.Itoa(count),
			"--first", strconv.Itoa(first), "--id-prefix", r.fleet.Prefix, "--product", strings.Join(ps, ","),
			"--fw-version", "1.0", "--sw-version", "1.0", "--cells", strconv.Itoa(r.o.Cells), "--coverage", r.o.Coverage,
			"--fail-rate", strconv.FormatFloat(r.o.FailRate, 'g', -1, 64), "--register",
			"--think-time", r.o.ThinkTime.String(), "--bandwidth", strconv.FormatInt(r.o.BytesPerSecond, 10),
			"--drop-rate", strconv.FormatFloat(r.o.DropRate, 'g', -1, 64),
			"--report", filepath.Join(r.dir, fmt.Sprintf("sim-%d.json", k)), "--log-level", cmp.Or(r.o.SimLogLevel, "warn")}
		if r.o.DTLS {
			args = append(args, "--dtls")
		}
		if len(r.peers) > 0 {
			// Every node's addresses: each device starts on the one its ID
			// hashes to and fails over to the next ones.
			list := func(key, scheme string) string {
				l := []string{scheme + r.addrs[key]}
				for _, p := range r.peers {
					l = append(l, scheme+p.addrs[key])
				}
				return strings.Join(l, ",")
			}
			args = append(args, "--mqtt", list("mqtt", "tcp://"), "--coap", list("coap", ""))
			if r.o.DTLS {
				args = append(args, "--coaps", list("coaps", ""))
			}
		}
		if k == 0 && r.o.SimCPUProfile != "" {
			args = append(args, "--cpu-profile", r.o.SimCPUProfile)
		}
		if r.o.Devices > DevicesPerLocalAddr {
			// The simulators share the machine's ephemeral ports: give each
			// its own loopback address (127.0.0.2, …; the server is on .1).
			args = append(args, "--local-addr", LoopbackIP(k+2))
		}
		c, err := r.startChild(fmt.Sprintf("sim-%d", k), args...)
		if err != nil {
			return sims, err
		}
		sims = append(sims, c)
	}
	// Each prints "ready devices=N" once all its devices are up.
	for _, s := range sims {
		t := r.clk.NewTimer(15 * time.Minute)
		ok := false
		for !ok {
			select {
			case line := <-s.lines:
				ok = strings.HasPrefix(line, "ready ")
			case <-s.done:
				t.Stop()
				return sims, fmt.Errorf("%s exited before its devices were up: %v\n%s", s.name, s.err, s.tail())
			case <-t.C():
				return sims, fmt.Errorf("%s: devices not up within 15 minutes (log %s)", s.name, s.log)
			case <-ctx.Done():
				t.Stop()
				return sims, ctx.Err()
			}
		}
		t.Stop()
	}
	return sims, nil
}

type simsReport struct {
	SimReport
	children []*child
	err      error
}

// stopSims interrupts the simulators and sums their reports.
func stopSims(sims []*child, clk clock.Clock) simsReport {
	out := simsReport{children: sims}
	for _, s := range sims {
		_ = s.cmd.Process.Signal(os.Interrupt)
	}
	for _, s := range sims {
		t := clk.NewTimer(2 * time.Minute)
		select {
		case <-s.done:
		case <-t.C():
			_ = s.cmd.Process.Kill()
			<-s.done
			out.err = errors.Join(out.err, fmt.Errorf("%s did not stop within 2 minutes", s.name))
		}
		t.Stop()
		path := ""
		for i, a := range s.cmd.Args {
			if a == "--report" && i+1 < len(s.cmd.Args) {
				path = s.cmd.Args[i+1]
			}
		}
		b, err := os.ReadFile(path)
		var rep SimReport
		if err == nil {
			err = json.Unmarshal(b, &rep)
		}
		if err != nil {
			out.err = errors.Join(out.err, fmt.Errorf("%s's report: %w", s.name, err))
			continue
		}
		out.Upgrades += rep.Upgrades
		out.UpgradedTwice += rep.UpgradedTwice
		out.TwiceIDs = append(out.TwiceIDs, rep.TwiceIDs...)
	}
	return out
}

var packageFor = map[string]v1.PackageType{
	ProtoMQTT: v1.PackageType_PACKAGE_TYPE_FIRMWARE, ProtoLwM2M: v1.PackageType_PACKAGE_TYPE_FIRMWARE, ProtoPCP: v1.PackageType_PACKAGE_TYPE_SOFTWARE,
}

var taskFor = map[string]v1.TaskType{
	ProtoMQTT: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, ProtoLwM2M: v1.TaskType_TASK_TYPE_FIRMWARE_UPGRADE, ProtoPCP: v1.TaskType_TASK_TYPE_SOFTWARE_UPGRADE,
}

func (r *benchRun) createTasks(ctx context.Context, products map[string]string) ([]string, error) {
	content := make([]byte, r.o.PackageBytes)
	_, _ = rand.Read(content)
	var tasks []string
	maxTaskDevices := taskfsm.DefaultConfig().MaxTargets // of the server bench starts
	for _, p := range r.protos {
		pkg, err := r.api.Packages.CreatePackage(ctx, connect.NewRequest(&v1.CreatePackageRequest{
			ProductId: products[p], PackageType: packageFor[p], Version: "2.0", SourceVersions: []string{"1.0"},
			FileName: "bench-" + p + "-2.0.bin", Content: content,
		}))
		if err != nil {
			return nil, fmt.Errorf("creating the %s package: %w", p, err)
		}
		ids := r.fleet.IDs(p)
		for part := 0; len(ids) > 0; part++ {
			n := min(len(ids), maxTaskDevices)
			req := &v1.CreateTaskRequest{
				Name: fmt.Sprintf("bench_%s_%d", p, part), TaskType: taskFor[p],
				PackageId: pkg.Msg.GetPackage().GetPackageId(), DeviceIds: ids[:n],
			}
			if r.o.Retries > 0 {
				retries, interval := uint32(r.o.Retries), uint32(1)
				req.Policy = &v1.Policy{RetryCount: &retries, RetryIntervalMinutes: &interval}
			}
			t, err := r.api.Tasks.CreateTask(ctx, connect.NewRequest(req))
			if err != nil {
				return nil, fmt.Errorf("creating the %s task: %w", p, err)
			}
			tasks = append(tasks, t.Msg.GetTask().GetTaskId())
			ids = ids[n:]
		}
	}
	r.rep.Tasks = tasks
	return tasks, nil
}

// serverFigures reads the budget metrics and the synced journal appends from
// the server whose API address is api.
func (r *benchRun) serverFigures(ctx context.Context, api string) (peak, budget, violations, synced int, err error) {
	mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(mctx, "GET", "http://"+api+"/metrics", nil)
	resp, err := r.metrics.Do(req)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	val := func(name string) (int, error) {
		f, ok := fams[name]
		if !ok || len(f.GetMetric()) == 0 {
			return 0, fmt.Errorf("the server exports no %s", name)
		}
		m := f.GetMetric()[0]
		switch {
		case m.GetGauge() != nil:
			return int(math.Round(m.GetGauge().GetValue())), nil
		case m.GetCounter() != nil:
			return int(math.Round(m.GetCounter().GetValue())), nil
		}
		return 0, fmt.Errorf("%s is neither a gauge nor a counter", name)
	}
	var errs [4]error
	peak, errs[0] = val("otafleet_cell_budget_units_peak")
	budget, errs[1] = val("otafleet_cell_budget_units")
	violations, errs[2] = val("otafleet_cell_budget_violations_total")
	synced, errs[3] = val("otafleet_journal_synced_appends_total")
	return peak, budget, violations, synced, errors.Join(errs[:]...)
}

// noteCells reads each server's figures (the cell budget's and the synced
// journal appends) into the report: the peak is the highest of any node's,
// violations and synced appends are summed.
func (r *benchRun) noteCells(ctx context.Context) {
	for _, n := range r.nodes() {
		peak, budget, violations, synced, err := r.serverFigures(ctx, n.api)
		if err != nil {
			continue // the next poll reads them
		}
		if seen := r.syncedSeen[n.api]; synced > seen {
			r.rep.SyncedCommits += int64(synced - seen)
			r.syncedSeen[n.api] = synced
		}
		r.rep.PeakCellUnits = max(r.rep.PeakCellUnits, peak)
		r.rep.CellBudgetUnits = budget
		if seen := r.violSeen[n.api]; violations > seen {
			r.rep.CellBudgetViolations += violations - seen
			r.violSeen[n.api] = violations
		}
	}
}

func (r *benchRun) watch(ctx context.Context, tasks []string, start time.Time, cpu0 time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	var taskCPU time.Duration
	lastLine := start
	killAt := int(math.Ceil(r.o.KillAt * float64(r.o.Devices)))
	killNodeAt := int(math.Ceil(r.o.KillNode * float64(r.o.Devices)))
	var end time.Time
	bo := &Backoff{Clock: r.clk}
	for {
		var done, ok, fail, running int
		allFinal := true
		for _, id := range tasks {
			t, err := r.getTask(ctx, bo, id)
			if err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("the tasks did not finish within %v", r.o.Timeout)
				}
				return fmt.Errorf("task %s: %w", id, err)
			}
			p := t.Msg.GetTask().GetProgress()
			ok += int(p.GetSuccess())
			fail += int(p.GetFail())
			running += int(p.GetProcessing())
			done += int(p.GetSuccess() + p.GetFail() + p.GetStopped())
			allFinal = allFinal && messages.TaskStatus(t.Msg.GetTask().GetStatus()).Final()
		}
		r.noteCells(ctx)
		if allFinal {
			end = r.clk.Now()
			break
		}
		if r.clk.Since(lastLine) >= 5*time.Second {
			lastLine = r.clk.Now()
			r.progress("%.0f s: %d/%d final (%d succeeded, %d failed), %d running; peak %d cell units", r.clk.Since(start).Seconds(), done, r.o.Devices, ok, fail, running, r.rep.PeakCellUnits)
		}
		if killNodeAt > 0 && r.rep.KilledNode == "" && done >= killNodeAt {
			if err := r.killPeer(done); err != nil {
				return err
			}
		}
		if killAt > 0 && r.rep.Restarts == 0 && done >= killAt {
			cpu, err := cpuOf(r.server.cmd.Process.Pid)
			if err != nil {
				return err
			}
			taskCPU += cpu - cpu0
			r.noteCells(ctx)
			r.progress("%d/%d final: killing the server with SIGKILL", done, r.o.Devices)
			_ = r.server.cmd.Process.Kill()
			<-r.server.done
			r.addUsage(r.server)
			r.rep.Restarts++
			r.rep.KilledAtFinal = done
			clear(r.violSeen)
			clear(r.syncedSeen)
			if err := r.startServer(ctx); err != nil {
				return fmt.Errorf("restarting the server: %w", err)
			}
			r.progress("server restarted")
			cpu0 = 0 // recovery is the task's work too
		}
		if err := r.sleep(ctx, 200*time.Millisecond); err != nil {
			return fmt.Errorf("the tasks did not finish within %v", r.o.Timeout)
		}
	}
	cpu, err := cpuOf(r.server.cmd.Process.Pid)
	if err != nil {
		return err
	}
	taskCPU += cpu - cpu0
	if len(r.rep.Nodes) > 0 {
		r.rep.Nodes[0].TaskCPUSeconds = taskCPU.Seconds()
	}
	for k, p := range r.peers {
		if p.c != nil { // a killed node's was taken at the kill
			cpu, err := cpuOf(p.c.cmd.Process.Pid)
			if err != nil {
				return err
			}
			p.taskCPU = cpu - p.cpu0
		}
		r.rep.Nodes[k+1].TaskCPUSeconds = p.taskCPU.Seconds()
		taskCPU += p.taskCPU
	}
	r.rep.EngineTaskCPUSeconds = taskCPU.Seconds()
	if r.o.EtcdPID != 0 {
		etcdCPU, err := treeCPUOf(r.o.EtcdPID)
		if err != nil {
			return fmt.Errorf("etcd's CPU: %w", err)
		}
		r.rep.EtcdTaskCPUSeconds = (etcdCPU - r.etcdCPU0).Seconds()
	}
	if r.o.StorePID != 0 {
		storeCPU, err := treeCPUOf(r.o.StorePID)
		if err != nil {
			return fmt.Errorf("the PostgreSQL server's CPU: %w", err)
		}
		r.rep.StoreTaskCPUSeconds = (storeCPU - r.storeCPU0).Seconds()
	}
	r.rep.WallSeconds = end.Sub(start).Seconds()
	if killNodeAt > 0 && r.rep.KilledNode == "" {
		r.rep.Problems = append(r.rep.Problems, fmt.Sprintf(
			"--kill-node %.0f%%: the devices became final faster than the progress was polled; no node was killed (spread them with --think-time or --bandwidth)",
			r.o.KillNode*100))
	}
	if killAt > 0 && r.rep.Restarts == 0 {
		r.rep.Problems = append(r.rep.Problems, fmt.Sprintf(
			"--kill-at %.0f%%: the devices became final faster than the progress was polled; the server was never killed (spread them with --think-time or --bandwidth)",
			r.o.KillAt*100))
	}
	return r.collect(ctx, tasks)
}

// getTask reads a task, riding out a slow or missing answer (bo).
func (r *benchRun) getTask(ctx context.Context, bo *Backoff, id string) (*connect.Response[v1.GetTaskResponse], error) {
	for {
		t, err := r.api.Tasks.GetTask(ctx, connect.NewRequest(&v1.GetTaskRequest{TaskId: id}))
		if err == nil {
			bo.Reset()
			return t, nil
		}
		if err := bo.Retry(ctx, err); err != nil {
			return nil, err
		}
		r.progress("task %s: the server answered slowly (%v); asking again", id, connect.CodeOf(err))
	}
}

// taskDevices reads a page of a task's devices, riding out a slow or
// missing answer (bo).
func (r *benchRun) taskDevices(ctx context.Context, bo *Backoff, id, page string) (*connect.Response[v1.ListTaskDevicesResponse], error) {
	for {
		resp, err := r.api.Tasks.ListTaskDevices(ctx, connect.NewRequest(&v1.ListTaskDevicesRequest{TaskId: id, PageSize: 1000, PageToken: page}))
		if err == nil {
			bo.Reset()
			return resp, nil
		}
		if err := bo.Retry(ctx, err); err != nil {
			return nil, err
		}
		r.progress("task %s devices: the server answered slowly (%v); asking again", id, connect.CodeOf(err))
	}
}

// collect reads every task's devices: outcome, duration and reason, and
// checks that each device of the fleet is in exactly one task, once, in a
// final state.
func (r *benchRun) collect(ctx context.Context, tasks []string) error {
	seen := make(map[string]int, r.o.Devices)
	protoOf := make(map[string]string, r.o.Devices)
	for n := range r.o.Devices {
		d := r.fleet.Device(n)
		protoOf[d.ID] = d.Protocol
	}
	var durations []time.Duration
	bo := &Backoff{Clock: r.clk}
	for _, id := range tasks {
		page := ""
		for {
			resp, err := r.taskDevices(ctx, bo, id, page)
			if err != nil {
				return fmt.Errorf("task %s devices: %w", id, err)
			}
			for _, d := range resp.Msg.GetDevices() {
				seen[d.GetDeviceId()]++
				if d.GetAttempts() > 1 {
					r.rep.Retried++
				}
				switch d.GetStatus() {
				case v1.SubtaskStatus_SUBTASK_STATUS_SUCCESS:
					r.rep.Succeeded++
				case v1.SubtaskStatus_SUBTASK_STATUS_FAIL:
					r.rep.Failed++
					r.rep.Failures[d.GetFailureReason()]++
					proto := protoOf[d.GetDeviceId()]
					if r.rep.FailuresByProtocol[proto] == nil {
						r.rep.FailuresByProtocol[proto] = map[string]int{}
					}
					r.rep.FailuresByProtocol[proto][d.GetFailureReason()]++
				case v1.SubtaskStatus_SUBTASK_STATUS_STOPPED:
					r.rep.Stopped++
				default:
					r.rep.Problems = append(r.rep.Problems, fmt.Sprintf("device %s ended the run in %v", d.GetDeviceId(), d.GetStatus()))
				}
				if s, u := d.GetStartTime(), d.GetUpdateTime(); s != nil && u != nil {
					durations = append(durations, u.AsTime().Sub(s.AsTime()))
				}
			}
			if page = resp.Msg.GetNextPageToken(); page == "" {
				break
			}
		}
	}
	missing, twice := 0, 0
	for n := range r.o.Devices {
		switch seen[r.fleet.Device(n).ID] {
		case 0:
			missing++
		case 1:
		default:
			twice++
		}
	}
	if missing > 0 {
		r.rep.Problems = append(r.rep.Problems, fmt.Sprintf("%d devices are in no task", missing))
	}
	if twice > 0 {
		r.rep.Problems = append(r.rep.Problems, fmt.Sprintf("%d devices are listed more than once", twice))
	}
	if r.rep.Restarts > 0 {
		r.rep.LostPCPExecutes = r.rep.FailuresByProtocol[ProtoPCP][messages.ReasonText(messages.Reason_REASON_UPDATE_START_TIMEOUT)]
	}
	// With a node killed, a device whose step's downlink or report died
	// with the node may fail (or its retry runs it again): reported, no
	// problem of the run.
	if failed := r.rep.Failed - r.rep.LostPCPExecutes; r.o.FailRate == 0 && failed > 0 && r.rep.KilledNode == "" {
		r.rep.Problems = append(r.rep.Problems, fmt.Sprintf("%d devices failed although --fail-rate is 0", failed))
	}
	r.rep.EveryDeviceOneFinalState = missing == 0 && twice == 0 && r.rep.Succeeded+r.rep.Failed+r.rep.Stopped == r.o.Devices
	r.rep.setDurations(durations)
	if r.rep.WallSeconds > 0 {
		r.rep.UpgradesPerSecond = float64(r.rep.Succeeded) / r.rep.WallSeconds
	}
	if done := r.rep.Succeeded + r.rep.Failed; done > 0 {
		r.rep.EngineCPUPerUpgradeMs = r.rep.EngineTaskCPUSeconds * 1000 / float64(done)
		r.rep.StoreCPUPerUpgradeMs = r.rep.StoreTaskCPUSeconds * 1000 / float64(done)
		r.rep.EtcdCPUPerUpgradeMs = r.rep.EtcdTaskCPUSeconds * 1000 / float64(done)
		for k := range r.rep.Nodes {
			r.rep.Nodes[k].CPUPerUpgradeMs = r.rep.Nodes[k].TaskCPUSeconds * 1000 / float64(done)
		}
		r.rep.SyncedCommitsPerUpgrade = float64(r.rep.SyncedCommits) / float64(done)
	}
	r.rep.CellBudgetExceeded = r.rep.CellBudgetViolations > 0 || r.rep.PeakCellUnits > r.rep.CellBudgetUnits
	if r.rep.CellBudgetExceeded {
		r.rep.Problems = append(r.rep.Problems, fmt.Sprintf("the cell budget was exceeded: peak %d of %d units, %d violations", r.rep.PeakCellUnits, r.rep.CellBudgetUnits, r.rep.CellBudgetViolations))
	}
	return nil
}
