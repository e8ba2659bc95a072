package actors

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/cluster"
	"github.com/asynkron/protoactor-go/cluster/clusterproviders/etcd"
	"github.com/asynkron/protoactor-go/cluster/identitylookup/disthash"
	"github.com/asynkron/protoactor-go/remote"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
)

// ClusterConfig makes the engine one node of a cluster (Config.Cluster;
// nil runs it alone, with no remote and no etcd).
//
// Membership comes from etcd through protoactor's etcd cluster provider,
// and messages cross nodes over protoactor remote (gRPC). Every node owns
// the actors whose address its rendezvous hash over the current members
// picks (protoactor's cluster.Rendezvous, the hashing its disthash
// identity lookup uses). Delivery does not go through protoactor's grain
// activation: the directory is the identity lookup. A message for an actor
// another node owns goes, as a protobuf envelope, to that node's directory
// actor, which delivers it to its local actor as the directory does on one
// node; so every message reaches one live activation, and no node ever
// runs two for one address.
type ClusterConfig struct {
	// Etcd lists etcd's client endpoints (host:port or http://host:port).
	Etcd []string
	// Name is the cluster's name: nodes of one name form one cluster
	// (their etcd keys are /otafleet/NAME/...).
	Name string
	// BindAddr is the host:port the node's remote listens on (port 0
	// picks a free one).
	BindAddr string
	// AdvertiseAddr is the host:port other nodes reach this one at, when
	// it is not BindAddr (behind NAT); "" advertises the bound address.
	AdvertiseAddr string
	// JoinTimeout bounds the node's first read from etcd in Start (real
	// time; 0: 10 s): a node whose etcd does not answer fails to start.
	JoinTimeout time.Duration
	// Lease is the TTL of the node's etcd lease (0: DefaultLease): a node
	// whose keep-alives stop (it died, or stalled that long) leaves the
	// membership when it expires. Whole seconds (etcd's unit), rounded up.
	Lease time.Duration
}

// DefaultLease is the etcd lease of a node (ClusterConfig.Lease), the TTL
// protoactor's etcd provider asks for.
const DefaultLease = 3 * time.Second

// MaxLease bounds ClusterConfig.Lease: past it a dead node's actors wait
// too long for their new owner.
const MaxLease = time.Minute

// Validate checks the cluster section.
func (c *ClusterConfig) Validate() error {
	switch {
	case len(c.Etcd) == 0:
		return errors.New("actors: cluster: no etcd endpoint")
	case c.Name == "":
		return errors.New("actors: cluster: no cluster name")
	}
	if _, _, err := splitAddr(c.BindAddr); err != nil {
		return fmt.Errorf("actors: cluster: node address: %w", err)
	}
	if c.Lease != 0 && (c.Lease < time.Second || c.Lease > MaxLease) {
		return fmt.Errorf("actors: cluster: lease %v: want 1s to %v", c.Lease, MaxLease)
	}
	if c.AdvertiseAddr != "" {
		if _, p, err := splitAddr(c.AdvertiseAddr); err != nil || p == 0 {
			return fmt.Errorf("actors: cluster: advertise address %q: want host:port with a port", c.AdvertiseAddr)
		}
	}
	return nil
}

func splitAddr(a string) (string, int, error) {
	h, p, err := net.SplitHostPort(a)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", a)
	}
	return h, port, nil
}

// The names of a node's cluster actors and of the kind every engine node
// registers (members with it own actors; see node.owner).
const (
	clusterKind    = "otafleet"
	directoryActor = "otafleet-directory"
	edgeActor      = "otafleet-edge"
)

// node is the engine's part of a cluster: membership, placement, and the
// two named actors that other nodes send to.
type node struct {
	e    *Engine
	cfg  ClusterConfig
	c    *cluster.Cluster
	prov *etcdProvider
	rv   *cluster.Rendezvous
	// self is this node's address (host:port), once joined (read with me).
	self atomic.Pointer[string]

	mu       sync.RWMutex
	members  map[string]bool // addresses of the current members
	ms       cluster.Members // the current members (of the engine's kind)
	seenSelf bool
	leaving  bool // leave ran: the node's absence from the members is its own doing

	changed  chan struct{} // buffered: the topology changed since the last reconcile
	lost     chan struct{} // closed when this node dropped out of its own member list
	lostOnce sync.Once
	watching sync.WaitGroup

	// etcdDial, when set (tests), dials etcd for the provider's client.
	etcdDial func(ctx context.Context, addr string) (net.Conn, error)
	// dropTo, when set (tests), names a node whose inputs tell drops, as
	// the network loses what is in flight to a node that dies (dropped
	// counts them).
	dropTo  atomic.Pointer[string]
	dropped atomic.Int64
	// holding (tests) keeps the topologies protoactor publishes from the
	// node (the last in held) until released: its view of the members
	// stays behind the others'.
	holdMu  sync.Mutex
	holding bool
	held    *cluster.ClusterTopology
	// passedAgain counts the inputs redeliverPassed sent again.
	passedAgain atomic.Int64
	// awaiting counts the requests waiting for their reply (awaitReply).
	awaiting atomic.Int64

	// traffic counts RoutedInputs by peer: sent to, received from (tests
	// settle a cluster on them).
	trafficMu sync.Mutex
	sentTo    map[string]int64
	recvFrom  map[string]int64

	// gen counts topology updates and done the one the last reconcile
	// followed; tick is closed (and replaced) when either moves.
	tickMu    sync.Mutex
	gen, done uint64
	tick      chan struct{}
	// topo is gen, read without the lock (shell.owned caches by it).
	topo atomic.Uint64

	// prev is the members the last reconcile followed (only reconcile
	// reads and writes it): a reconcile tells what left since.
	prev cluster.Members

	// noAckMu guards noAckTold (no_ack reports told to each peer and not
	// yet credited) and noAckOwed (those each peer told this node, stepped
	// and not yet credited); see noack.go.
	noAckMu   sync.Mutex
	noAckTold map[string]*noAckPeer
	noAckOwed map[string]int

	// passedMu guards passed: the inputs between actors that this node's
	// directory actor passed on to the owner of its view since the last
	// reconcile (see receiveDirectory, redeliverPassed).
	passedMu sync.Mutex
	passed   []passedInput
}

// passedInput is an input the directory actor passed on to owner.
type passedInput struct {
	owner string
	a     Address
	msg   proto.Message
}

// maxPassed bounds node.passed: the directory passes inputs on only while
// the members' views differ, a moment after each change.
const maxPassed = 1 << 14

func newNode(e *Engine, cfg ClusterConfig) *node {
	return &node{e: e, cfg: cfg, rv: cluster.NewRendezvous(), members: map[string]bool{},
		changed: make(chan struct{}, 1), lost: make(chan struct{}),
		sentTo: map[string]int64{}, recvFrom: map[string]int64{}, tick: make(chan struct{}),
		noAckTold: map[string]*noAckPeer{}, noAckOwed: map[string]int{}}
}

// bump moves gen (update) or done (reconcile) and wakes the waiters.
func (n *node) bump(f func()) {
	n.tickMu.Lock()
	f()
	close(n.tick)
	n.tick = make(chan struct{})
	n.tickMu.Unlock()
}

// settled reports whether the last topology update was reconciled, and
// returns a channel closed at the next change.
func (n *node) settled() (bool, <-chan struct{}) {
	n.tickMu.Lock()
	defer n.tickMu.Unlock()
	return n.done == n.gen, n.tick
}

// etcdProvider is protoactor's etcd provider, built when the member starts:
// its etcd client (gRPC) is then created after remote has set gRPC's logger,
// which remote.Start does unsynchronized.
//
// The provider never closes its etcd client, whose lease keep-alives would
// go on after it deregistered: the client runs under a context of its own,
// cancelled by Shutdown.
type etcdProvider struct {
	cfg    clientv3.Config
	join   time.Duration // probe's bound
	mu     sync.Mutex
	p      *etcd.Provider
	cancel context.CancelFunc
}

// leaseTTL sets the TTL of the leases the etcd client grants to d (whole
// seconds, rounded up). The pinned provider asks for a fixed 3 s
// (etcd.Provider.keepAliveTTL, not configurable); its only lease is the
// member's, and the client's keep-alives follow the TTL etcd granted, so
// changing the request is all it takes.
func leaseTTL(d time.Duration) grpc.UnaryClientInterceptor {
	secs := int64((d + time.Second - 1) / time.Second)
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if r, ok := req.(*etcdserverpb.LeaseGrantRequest); ok && r.TTL != secs {
			req = &etcdserverpb.LeaseGrantRequest{TTL: secs, ID: r.ID}
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

func (l *etcdProvider) start(c *cluster.Cluster, member bool) error {
	if err := l.probe(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	cfg := l.cfg
	cfg.Context = ctx
	p, err := etcd.NewWithConfig("/otafleet", cfg)
	if err != nil {
		cancel()
		return err
	}
	l.mu.Lock()
	l.p, l.cancel = p, cancel
	l.mu.Unlock()
	if member {
		return p.StartMember(c)
	}
	return p.StartClient(c)
}

// probe reads from etcd once, within l.join: the provider's own
// calls wait for etcd without a deadline, so a node whose etcd does not
// answer would hang in Start instead of failing.
func (l *etcdProvider) probe() error {
	cli, err := clientv3.New(l.cfg)
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), l.join)
	defer cancel()
	if _, err := cli.Get(ctx, "/otafleet/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcd %v did not answer: %w", l.cfg.Endpoints, err)
	}
	return nil
}

func (l *etcdProvider) StartMember(c *cluster.Cluster) error { return l.start(c, true) }
func (l *etcdProvider) StartClient(c *cluster.Cluster) error { return l.start(c, false) }
func (l *etcdProvider) Shutdown(graceful bool) error {
	l.mu.Lock()
	p, cancel := l.p, l.cancel
	l.p, l.cancel = nil, nil
	l.mu.Unlock()
	if p == nil {
		return nil
	}
	err := p.Shutdown(graceful)
	cancel()
	return err
}

// join starts remote and joins the cluster: once it returns, the node is a
// member and knows the others.
func (n *node) join() (err error) {
	host, port, _ := splitAddr(n.cfg.BindAddr)
	ropts := remoteOptions()
	if n.cfg.AdvertiseAddr != "" {
		ropts = append(ropts, remote.WithAdvertisedHost(n.cfg.AdvertiseAddr))
	}
	// The etcd client logs (zap) to stderr; the provider logs what matters.
	ecfg := clientv3.Config{Endpoints: n.cfg.Etcd, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if n.etcdDial != nil {
		ecfg.DialOptions = append(ecfg.DialOptions, grpc.WithContextDialer(n.etcdDial))
	}
	if n.cfg.Lease != 0 && n.cfg.Lease != DefaultLease {
		ecfg.DialOptions = append(ecfg.DialOptions, grpc.WithChainUnaryInterceptor(leaseTTL(n.cfg.Lease)))
	}
	n.prov = &etcdProvider{cfg: ecfg, join: cmp.Or(n.cfg.JoinTimeout, 10*time.Second)}
	kind := cluster.NewKind(clusterKind, actor.PropsFromFunc(func(actor.Context) {}))
	cfg := cluster.Configure(n.cfg.Name, n.prov, disthash.New(), remote.Configure(host, port, ropts...), cluster.WithKinds(kind))
	sys := n.e.system
	n.c = cluster.New(sys, cfg)
	// The named actors exist before other nodes can learn of this one.
	if _, err := sys.Root.SpawnNamed(actor.PropsFromFunc(n.receiveDirectory), directoryActor); err != nil {
		return fmt.Errorf("actors: cluster: %w", err)
	}
	if _, err := sys.Root.SpawnNamed(actor.PropsFromFunc(n.receiveEdge), edgeActor); err != nil {
		return fmt.Errorf("actors: cluster: %w", err)
	}
	sys.EventStream.Subscribe(func(evt any) {
		if t, ok := evt.(*cluster.ClusterTopology); ok {
			n.holdMu.Lock()
			if n.holding {
				n.held = t
				n.holdMu.Unlock()
				return
			}
			n.holdMu.Unlock()
			n.update(t)
		}
	})
	defer func() {
		// cluster.StartMember panics when the provider fails (etcd unreachable).
		if r := recover(); r != nil {
			err = fmt.Errorf("actors: cluster: joining through etcd %v: %v", n.cfg.Etcd, r)
		}
	}()
	n.c.StartMember()
	self := sys.Address()
	n.mu.Lock()
	n.self.Store(&self)
	if n.members[self] {
		n.seenSelf = true
	}
	n.mu.Unlock()
	n.e.log.Info("joined the cluster", "cluster", n.cfg.Name, "node", self, "members", n.memberCount())
	// The etcd provider's key of this member (etcd.Provider.getEtcdKey).
	n.guard("/otafleet/" + n.cfg.Name + "/" + n.cfg.Name + "@" + sys.ID)
	return nil
}

// remoteWindow is the HTTP/2 flow-control window (per stream and per
// connection) of the gRPC connections between nodes. A fixed window turns
// off gRPC's bandwidth-delay estimation, which otherwise answers nearly
// every data frame of the nodes' sparse messages with a window update and a
// ping (and the sender with a ping ack): three writes for one message.
const remoteWindow = 1 << 20

// remoteQueue is the initial size of the queue of protoactor remote's
// writer to each peer (it grows when it must). remote's default, a million
// slots, is 16 MB of pointers per peer that the garbage collector scans at
// every cycle, for a queue that holds a few messages.
const remoteQueue = 1024

// remoteOptions configures protoactor remote's gRPC for the nodes' traffic
// (the dial options replace remote's default, which is insecure too).
func remoteOptions() []remote.ConfigOption {
	return []remote.ConfigOption{
		remote.WithEndpointWriterQueueSize(remoteQueue),
		remote.WithDialOptions(grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithInitialWindowSize(remoteWindow), grpc.WithInitialConnWindowSize(remoteWindow)),
		remote.WithServerOptions(grpc.InitialWindowSize(remoteWindow), grpc.InitialConnWindowSize(remoteWindow)),
	}
}

// leave deregisters the node (the others see it go at once) and stops the
// cluster's machinery; the actor system stops after it.
func (n *node) leave() {
	if n.c == nil {
		return
	}
	n.mu.Lock()
	n.leaving = true
	n.mu.Unlock()
	if err := n.prov.Shutdown(true); err != nil {
		n.e.log.Warn("cluster: leaving etcd", "error", err)
	}
}

// shutdown stops gossip, remote and the actor system (after the engine's
// actors stopped).
func (n *node) shutdown() {
	if n.c == nil {
		n.e.system.Shutdown() // never joined
		return
	}
	n.c.Gossip.Shutdown()
	n.c.Shutdown(false)
	n.watching.Wait()
}

// update takes a new topology: the placement follows it, and the
// reconciler passivates what moved away and activates what moved here.
func (n *node) update(t *cluster.ClusterTopology) {
	var ms cluster.Members
	set := map[string]bool{}
	ids := map[string]string{}
	for _, m := range t.GetMembers() {
		if m.HasKind(clusterKind) {
			ms = append(ms, m)
			set[m.Address()] = true
			ids[m.Address()] = m.GetId()
		}
	}
	n.forgetNoAck(ids)
	// The member set first, then the placement: an owner the placement
	// names is then always in the set (node.awaitReply relies on it).
	n.mu.Lock()
	n.members, n.ms = set, ms
	self := n.me()
	lost := false
	if self != "" {
		if set[self] {
			n.seenSelf = true
		} else if n.seenSelf && !n.leaving {
			lost = true
		}
	}
	n.mu.Unlock()
	n.rv.UpdateMembers(ms)
	if lost {
		n.markLost("its own member list no longer has it (its etcd lease expired)")
	}
	n.bump(func() { n.gen++; n.topo.Store(n.gen) })
	select {
	case n.changed <- struct{}{}:
	default:
	}
}

// me returns this node's address ("" before it joined).
func (n *node) me() string {
	if p := n.self.Load(); p != nil {
		return *p
	}
	return ""
}

// markLost closes lost (once): the node is out of its cluster.
func (n *node) markLost(why string) {
	n.mu.RLock()
	leaving := n.leaving
	n.mu.RUnlock()
	if leaving {
		return
	}
	n.lostOnce.Do(func() {
		n.e.log.Error("this node is no longer a member of its cluster: it stops taking work", "node", n.me(), "why", why)
		n.e.dir.closed.Store(true) // refuse work now; watch stops the actors
		close(n.lost)
	})
}

// guard checks every guardEvery (real time) that this node's etcd key is
// the one it registered: gone, or created anew (its lease expired while
// the node could not reach etcd, and the provider registered it again),
// the node is out of the cluster. The other members block a node that
// left (protoactor's BlockList), so a node that comes back from a
// partition under its old identity is never a member again: it must stop,
// and restart to rejoin. While etcd does not answer nothing is known, and
// the node goes on.
func (n *node) guard(key string) {
	cli, err := clientv3.New(n.prov.cfg)
	if err != nil {
		n.e.log.Warn("cluster: the membership guard has no etcd client", "error", err)
		return
	}
	n.watching.Add(1)
	go func() {
		defer n.watching.Done()
		defer cli.Close()
		real := clock.Real()
		var created int64
		for {
			t := real.NewTimer(guardEvery)
			select {
			case <-t.C():
			case <-n.e.stopped:
				t.Stop()
				return
			case <-n.lost:
				t.Stop()
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), guardEvery)
			resp, err := cli.Get(ctx, key)
			cancel()
			switch {
			case err != nil:
				continue // etcd does not answer: nothing is known
			case len(resp.Kvs) == 0:
				if created != 0 {
					n.markLost("its etcd key is gone")
				}
			case created == 0:
				created = resp.Kvs[0].CreateRevision
			case resp.Kvs[0].CreateRevision != created:
				n.markLost("its etcd key was created anew: its lease had expired")
			}
		}
	}()
}

// guardEvery is how often guard reads the node's etcd key (real time).
const guardEvery = time.Second

func (n *node) memberCount() int {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return len(n.members)
}

// memberID returns the ID of the member at addr ("" when none).
func (n *node) memberID(addr string) string {
	n.mu.RLock()
	defer n.mu.RUnlock()
	for _, m := range n.ms {
		if m.Address() == addr {
			return m.GetId()
		}
	}
	return ""
}

func (n *node) isMember(addr string) bool {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.members[addr]
}

func (n *node) memberList() []string {
	n.mu.RLock()
	defer n.mu.RUnlock()
	out := make([]string, 0, len(n.members))
	for m := range n.members {
		out = append(out, m)
	}
	return out
}

// owner returns the address of the node that owns a, and whether it is
// this one. Before the node knows any member, it owns everything.
func (n *node) owner(a Address) (string, bool) {
	o := n.rv.GetByClusterIdentity(&cluster.ClusterIdentity{Kind: clusterKind, Identity: a.String()})
	self := n.me()
	if o == "" || o == self {
		return self, true
	}
	return o, false
}

// watch reconciles after each topology change until the engine stops.
func (n *node) watch() {
	n.watching.Add(1)
	go func() {
		defer n.watching.Done()
		for {
			select {
			case <-n.changed:
				n.reconcile()
			case <-n.lost:
				n.e.dir.stopAll()
				return
			case <-n.e.stopped:
				return
			}
		}
	}()
}

// reconcile passivates the live actors this node no longer owns (their
// successors start on their owners, from the store), has the others send
// again what may have been lost with a node that left (resendLost), and
// activates the active streams it now owns, as Start does at boot.
func (n *node) reconcile() {
	n.tickMu.Lock()
	gen := n.gen
	n.tickMu.Unlock()
	defer n.bump(func() { n.done = gen })
	n.mu.RLock()
	cur := n.ms
	n.mu.RUnlock()
	moved := n.e.dir.passivateWhere(func(a Address) bool { _, local := n.owner(a); return !local })
	nudged := n.resendLost(cur)
	again := n.redeliverPassed()
	woke := 0
	for _, kind := range []persistence.Kind{persistence.KindTask, persistence.KindCell, persistence.KindDevice} {
		err := n.e.deps.Store.Active(context.Background(), kind, func(id string) error {
			a := Address{Kind: kind, ID: id}
			if _, local := n.owner(a); local && !n.e.dir.isLive(a) {
				n.e.dir.send(a, activation{})
				woke++
			}
			return nil
		})
		if err != nil {
			n.e.log.Warn("cluster: listing active streams after a membership change", "kind", kindName(kind), "error", err)
		}
	}
	n.e.log.Info("cluster membership changed", "node", n.me(), "members", n.memberCount(), "passivated", moved, "activated", woke, "resent_by", nudged, "passed_again", again)
}

// resendLost follows the members from prev to cur: when some left, every
// live actor of this node (those that stay here) sends again, to the
// actors that a departed member owned, the idempotent requests and
// answers it may still owe them (peerLeft; what Resume would send after a
// restart). The inputs in flight to a node that dies are lost, and so is
// what a sender sent there before it saw the node leave (seconds, until
// its etcd lease expires); the actors that the node ran recover from the
// store on the survivors, but what they never received they cannot know
// of. It returns the number of actors told.
//
// An actor that moved here from the departed node is not live yet: it
// recovers (from reconcile's activation or its first input) and its own
// Resume sends what it owes.
func (n *node) resendLost(cur cluster.Members) int {
	prev := n.prev
	n.prev = cur
	if prev == nil {
		return 0
	}
	now := map[string]bool{}
	for _, m := range cur {
		now[m.Address()] = true
	}
	departed := map[string]bool{}
	for _, m := range prev {
		if !now[m.Address()] {
			departed[m.Address()] = true
		}
	}
	if len(departed) == 0 {
		return 0
	}
	old := cluster.NewRendezvous()
	old.UpdateMembers(prev)
	lost := func(a Address) bool {
		return departed[old.GetByClusterIdentity(&cluster.ClusterIdentity{Kind: clusterKind, Identity: a.String()})]
	}
	return n.e.dir.broadcast(peerLeft{lost: lost})
}

// peerLeft tells a live actor that members left the cluster: it sends
// again what it may still owe the actors for which lost holds (those the
// departed members owned), see machine.resend.
type peerLeft struct{ lost func(Address) bool }

// tell sends an input to the actor a on node owner.
func (n *node) tell(owner string, a Address, msg proto.Message, ifLive bool, hops uint32) bool {
	r := &messages.RoutedInput{Kind: string(a.Kind), Id: a.ID, IfLive: ifLive, Hops: hops}
	switch m := msg.(type) {
	case *messages.DeviceInput:
		r.Input = &messages.RoutedInput_Device{Device: m}
	case *messages.CellInput:
		r.Input = &messages.RoutedInput_Cell{Cell: m}
	case *messages.TaskInput:
		r.Input = &messages.RoutedInput_Task{Task: m}
	default:
		n.e.log.Error("cluster: no wire form for a message; dropped", "actor", a.String(), "type", fmt.Sprintf("%T", msg))
		return false
	}
	r.From = n.me()
	if d := n.dropTo.Load(); d != nil && *d == owner {
		n.dropped.Add(1)
		return true
	}
	n.noteSent(owner, true)
	n.e.system.Root.Send(actor.NewPID(owner, directoryActor), r)
	return true
}

// routedInput unwraps a RoutedInput; ok is false for one this engine
// cannot take (an unknown kind, an input of another kind's machine).
func routedInput(r *messages.RoutedInput) (Address, proto.Message, error) {
	a := Address{Kind: persistence.Kind(r.GetKind()), ID: r.GetId()}
	var msg proto.Message
	var want persistence.Kind
	switch in := r.GetInput().(type) {
	case *messages.RoutedInput_Device:
		msg, want = in.Device, persistence.KindDevice
	case *messages.RoutedInput_Cell:
		msg, want = in.Cell, persistence.KindCell
	case *messages.RoutedInput_Task:
		msg, want = in.Task, persistence.KindTask
	default:
		return a, nil, errors.New("no input")
	}
	if a.Kind != want {
		return a, nil, fmt.Errorf("input for kind %q sent to kind %q", want, a.Kind)
	}
	if err := persistence.ValidateID(a.ID); err != nil {
		return a, nil, err
	}
	return a, msg, nil
}

// receiveDirectory is the directory actor: inputs and requests from other
// nodes for actors this node owns. One that this node does not own by its
// own view (the nodes' views of the membership differ for a moment) goes
// on to the owner of its view once; after that it is delivered here.
func (n *node) receiveDirectory(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *messages.RoutedInput:
		defer n.noteReceived(m.GetFrom(), true)
		a, msg, err := routedInput(m)
		if err != nil {
			n.e.log.Warn("cluster: routed input refused", "from", senderAddr(ctx), "error", err)
			return
		}
		in, noAck := isNoAckReport(msg)
		if owner, local := n.owner(a); !local && m.GetHops() == 0 {
			if noAck {
				// Counted for the owner as told by this node; its sender
				// gets its credit back from here.
				n.takeCredit(owner, true)
				n.stepped(m.GetFrom())
			}
			n.tell(owner, a, msg, m.GetIfLive(), 1)
			n.notePassed(owner, a, msg)
			return
		}
		if noAck {
			from := m.GetFrom()
			n.e.dir.deliverLocal(a, report{in: in, then: func() { n.stepped(from) }})
			return
		}
		if m.GetIfLive() {
			if !n.e.dir.sendIfLive(a, msg) {
				n.e.metrics.updatesSkipped.Inc()
			}
			return
		}
		n.e.dir.deliverLocal(a, msg)
	case *messages.NoAckCredit:
		n.credited(m.GetFrom(), int(m.GetReports()))
		n.noteReceived(m.GetFrom(), false)
	case *messages.ClusterRequest:
		a := Address{Kind: persistence.Kind(m.GetKind()), ID: m.GetId()}
		sender := ctx.Sender()
		if sender == nil {
			return
		}
		if q := m.GetNode(); q != nil {
			r := &messages.ClusterReply{}
			if task := q.GetCellsOfTask(); task != "" {
				for _, v := range n.e.localTaskCells(task, q.GetAfter(), int(q.GetLimit())) {
					r.Cells = append(r.Cells, cellViewToWire(v))
				}
			} else {
				r.Live = map[string]uint32{}
				for k, c := range n.e.Live() {
					r.Live[k] = uint32(c)
				}
			}
			ctx.Respond(r)
			return
		}
		if err := checkKind(a); err != nil {
			ctx.Respond(replyError(err))
			return
		}
		if owner, local := n.owner(a); !local && m.GetHops() == 0 {
			m.Hops = 1
			n.e.system.Root.RequestWithCustomSender(actor.NewPID(owner, directoryActor), m, sender)
			return
		}
		go n.serve(a, m, sender)
	}
}

// notePassed keeps an input between actors that the directory actor
// passed on to owner, the owner by this node's view, which differed from
// the sender's: this node may be the one behind, the sender having seen
// owner leave (it died) and this node not yet. Such an input is lost
// with owner; the next reconcile delivers it again if owner has left
// (redeliverPassed). Only inputs that their receivers take again as a
// no-op are kept (a permit request, release or grant, an outcome, a
// StartJob or StopJob): owner may have taken it before it died.
func (n *node) notePassed(owner string, a Address, msg proto.Message) {
	if !resendable(msg) {
		return
	}
	n.passedMu.Lock()
	defer n.passedMu.Unlock()
	if len(n.passed) >= maxPassed {
		n.passed = n.passed[1:]
	}
	n.passed = append(n.passed, passedInput{owner: owner, a: a, msg: msg})
}

// resendable reports whether msg is an input between actors that its
// receiver takes again as a no-op.
func resendable(msg proto.Message) bool {
	switch m := msg.(type) {
	case *messages.CellInput:
		return m.GetRequestPermit() != nil || m.GetReleasePermit() != nil
	case *messages.TaskInput:
		return m.GetOutcome() != nil
	case *messages.DeviceInput:
		return m.GetStartJob() != nil || m.GetStopJob() != nil || m.GetPermitGranted() != nil
	}
	return false
}

// redeliverPassed sends again, to their owners now, the inputs passed on
// since the last reconcile to a node that is no longer a member, and
// forgets the others (their owner had them). It returns how many.
func (n *node) redeliverPassed() int {
	n.passedMu.Lock()
	passed := n.passed
	n.passed = nil
	n.passedMu.Unlock()
	k := 0
	for _, p := range passed {
		if !n.isMember(p.owner) {
			n.e.dir.send(p.a, p.msg)
			k++
			n.passedAgain.Add(1)
		}
	}
	return k
}

func senderAddr(ctx actor.Context) string {
	if s := ctx.Sender(); s != nil {
		return s.GetAddress()
	}
	return ""
}

func checkKind(a Address) error {
	switch a.Kind {
	case persistence.KindDevice, persistence.KindCell, persistence.KindTask:
	default:
		return fmt.Errorf("%w: unknown actor kind %q", persistence.ErrInvalid, a.Kind)
	}
	return persistence.ValidateID(a.ID)
}

// noteSent counts a message sent to a peer (an input, or a credit) for the
// tests' settling, and an input in the metrics.
func (n *node) noteSent(peer string, input bool) {
	n.trafficMu.Lock()
	n.sentTo[peer]++
	n.trafficMu.Unlock()
	if input {
		n.e.metrics.routed.WithLabelValues("sent").Inc()
	}
}

// noteReceived is noteSent's other end.
func (n *node) noteReceived(from string, input bool) {
	n.trafficMu.Lock()
	n.recvFrom[from]++
	n.trafficMu.Unlock()
	if input {
		n.e.metrics.routed.WithLabelValues("received").Inc()
	}
	if f := n.e.deps.ClusterReceived; f != nil {
		f()
	}
}

// serve answers a request for an actor of this node from its local actor
// or read model.
func (n *node) serve(a Address, req *messages.ClusterRequest, sender *actor.PID) {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	var reply *messages.ClusterReply
	switch r := req.GetRequest().(type) {
	case *messages.ClusterRequest_Report:
		reply = replyError(n.e.deliverReport(ctx, a, r.Report))
	case *messages.ClusterRequest_TaskCommand:
		reply = replyError(n.e.commandLocal(ctx, a, r.TaskCommand))
	case *messages.ClusterRequest_View:
		reply = n.e.viewLocal(ctx, a, r.View)
	default:
		reply = replyError(fmt.Errorf("%w: empty cluster request", persistence.ErrInvalid))
	}
	n.e.system.Root.Send(sender, reply)
}

// request asks the owner of a and waits for its reply.
func (n *node) request(ctx context.Context, owner string, req *messages.ClusterRequest) (*messages.ClusterReply, error) {
	f := n.e.system.Root.RequestFuture(actor.NewPID(owner, directoryActor), req, requestTimeout)
	res, err := n.awaitReply(ctx, f, owner)
	a := Address{Kind: persistence.Kind(req.GetKind()), ID: req.GetId()}
	switch {
	case errors.Is(err, errOwnerLeft):
		return nil, fmt.Errorf("%w: %s: node %s left the cluster before it answered", ErrTimeout, a, owner)
	case errors.Is(err, actor.ErrTimeout):
		return nil, fmt.Errorf("%w: %s on node %s", ErrTimeout, a, owner)
	case errors.Is(err, actor.ErrDeadLetter):
		return nil, fmt.Errorf("%w: %s: node %s is gone", ErrClosed, a, owner)
	case err != nil:
		return nil, err
	}
	r, ok := res.(*messages.ClusterReply)
	if !ok {
		return nil, fmt.Errorf("actors: cluster: node %s answered %T", owner, res)
	}
	return r, nil
}

// errOwnerLeft: the node a request went to left the membership before it
// answered.
var errOwnerLeft = errors.New("actors: cluster: the node left before it answered")

// awaitReply waits for f, for ctx, or until owner leaves the membership: a
// node killed with the request in hand never answers, and the transport
// delivering a device's report would otherwise hold that device's next
// exchanges for requestTimeout (a killed node leaves when its lease
// expires, seconds later). The caller then fails as on a timeout, as it
// did before, only sooner: its retry goes to the new owner.
func (n *node) awaitReply(ctx context.Context, f *actor.Future, owner string) (any, error) {
	n.awaiting.Add(1)
	defer n.awaiting.Add(-1)
	done := make(chan struct{})
	var res any
	var err error
	go func() {
		res, err = f.Result()
		close(done)
	}()
	for {
		_, tick := n.settled() // before the check: a change after it closes tick
		if owner != n.me() && !n.isMember(owner) {
			return nil, errOwnerLeft
		}
		select {
		case <-done:
			return res, err
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick:
		}
	}
}

// waitFuture waits for f or ctx.
func waitFuture(ctx context.Context, f *actor.Future) (any, error) {
	done := make(chan struct{})
	var res any
	var err error
	go func() {
		res, err = f.Result()
		close(done)
	}()
	select {
	case <-done:
		return res, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// receiveEdge is the edge actor: downlinks of device actors on other nodes
// for devices whose session may be here. A device without a session here
// is counted, not logged: a downlink of a device whose route is unknown
// goes to every node, and only one holds its session.
func (n *node) receiveEdge(ctx actor.Context) {
	m, ok := ctx.Message().(*messages.EdgeDownlink)
	if !ok {
		return
	}
	n.e.edgeLocal(m, true)
}

// edgeLocal hands a downlink to this node's transport. quiet counts a
// failure instead of logging it.
func (e *Engine) edgeLocal(m *messages.EdgeDownlink, quiet bool) {
	ctx := context.Background()
	var err error
	var dev string
	switch k := m.GetKind().(type) {
	case *messages.EdgeDownlink_Downlink:
		dev = k.Downlink.GetDeviceId()
		err = e.deps.Transport.Send(ctx, k.Downlink)
	case *messages.EdgeDownlink_RevokeToken:
		dev = k.RevokeToken.GetDeviceId()
		err = e.deps.Transport.RevokeToken(ctx, k.RevokeToken)
	default:
		return
	}
	if err == nil {
		return
	}
	if quiet {
		e.metrics.downlinksNoSession.Inc()
		return
	}
	e.log.Warn("downlink not sent", "device", dev, "error", err)
}

// downlink carries out a device actor's downlink or revocation: through
// this node's transport when the device's session is here (or on a single
// node), else through the edge actor of the node whose transport last
// delivered the device's input (route); when that is unknown (the actor
// just moved here) or gone, through every member's.
func (e *Engine) downlink(route string, m *messages.EdgeDownlink) {
	n := e.node
	if n == nil || route == n.me() {
		e.edgeLocal(m, false)
		return
	}
	if route != "" && n.isMember(route) {
		e.system.Root.Send(actor.NewPID(route, edgeActor), m)
		return
	}
	e.edgeLocal(m, true)
	for _, addr := range n.memberList() {
		if addr != n.me() {
			e.system.Root.Send(actor.NewPID(addr, edgeActor), m)
		}
	}
}
