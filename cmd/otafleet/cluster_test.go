package main

import (
	"bytes"
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/grpchealth"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/internal/clusterconfig"
)

// TestClusterUsage: the cluster flags' mistakes are usage errors (exit 2)
// that name the flag at fault; a config file sets them too.
func TestClusterUsage(t *testing.T) {
	t.Setenv(envSealKeyFile, "")
	key := writeKey(t, "k", strings.Repeat("ab", 32)+"\n", 0o600)
	pg := []string{"--store", "postgres://u:hunter2@db.example/otafleet", "--seal-key-file", key}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cluster", "etcd://127.0.0.1:2379", "--node-addr", "127.0.0.1:7001"}, "--cluster needs a postgres:// --store"},
		{[]string{"--cluster", "etcd://127.0.0.1:2379", "--node-addr", "127.0.0.1:7001", "--store", "pebble:x"}, "--cluster needs a postgres:// --store"},
		{[]string{"--cluster", "etcd://127.0.0.1:2379", "--node-addr", "127.0.0.1:7001", "--store", "postgres://u:hunter2@db/x"}, "needs --seal-key-file"},
		{append([]string{"--cluster", "http://127.0.0.1:2379", "--node-addr", "127.0.0.1:7001"}, pg...), `--cluster "http://127.0.0.1:2379": want etcd://HOST:PORT`},
		{append([]string{"--cluster", "etcd://127.0.0.1", "--node-addr", "127.0.0.1:7001"}, pg...), "endpoint \"127.0.0.1\": want HOST:PORT"},
		{append([]string{"--cluster", "etcd://127.0.0.1:2379"}, pg...), "--cluster needs --node-addr HOST:PORT"},
		{append([]string{"--cluster", "etcd://127.0.0.1:2379", "--node-addr", "7001"}, pg...), `--node-addr "7001": want HOST:PORT`},
		{append([]string{"--cluster", "etcd://127.0.0.1:2379", "--node-addr", "0.0.0.0:7001"}, pg...), "is a wildcard address, which other nodes cannot dial: give --advertise-addr"},
		{append([]string{"--cluster", "etcd://127.0.0.1:2379", "--node-addr", "0.0.0.0:7001", "--advertise-addr", "[::]:7001"}, pg...), `--advertise-addr "[::]:7001" is a wildcard address`},
		{append([]string{"--cluster", "etcd://127.0.0.1:2379", "--node-addr", "127.0.0.1:7001", "--cluster-name", "a b"}, pg...), `--cluster-name "a b"`},
		{append([]string{"--cluster", "etcd://127.0.0.1:2379", "--node-addr", "127.0.0.1:7001", "--mqtt-broker", "tcp://b:1883"}, pg...), "--cluster does not go with --mqtt-broker"},
		{[]string{"--node-addr", "127.0.0.1:7001"}, "--node-addr goes with --cluster"},
		{[]string{"--advertise-addr", "10.0.0.1:7001"}, "--advertise-addr goes with --cluster"},
		{[]string{"--cluster-name", "blue"}, "--cluster-name goes with --cluster"},
		{[]string{"--cluster-lease", "10s"}, "--cluster-lease goes with --cluster"},
		{append([]string{"--cluster", "etcd://127.0.0.1:2379", "--node-addr", "127.0.0.1:7001", "--cluster-lease", "500ms"}, pg...), "--cluster-lease must be from 1s to 1m0s, not 500ms"},
		{append([]string{"--cluster", "etcd://127.0.0.1:2379", "--node-addr", "127.0.0.1:7001", "--cluster-lease", "5m"}, pg...), "must be from 1s to 1m0s, not 5m0s"},
		{[]string{"--config", writeKey(t, "c.yaml", "cluster: etcd://e:2379\nnode-addr: \":7001\"\n", 0o600)}, "give --advertise-addr"},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), serveArgs(t.TempDir(), tc.args...), &out, &errb)
		if code != exitUsage || !strings.Contains(errb.String(), tc.want) || strings.Contains(errb.String(), "hunter2") {
			t.Errorf("serve %v: exit %d, stderr %q; want %d and %q", tc.args, code, errb.String(), exitUsage, tc.want)
		}
	}
}

// TestSessionSweeper: a node's sessions are dropped once it has been out
// of the membership for the grace period, by the first member only, never
// those of "" or of a member, and the count restarts when a node comes
// back.
func TestSessionSweeper(t *testing.T) {
	t0 := time.Unix(1000, 0)
	sw := &sessionSweeper{grace: 10 * time.Second}
	members := []string{"b:1", "a:1"}
	holders := []string{"", "a:1", "c:1", "d:1"}
	if got := sw.due(t0, "a:1", members, holders); len(got) != 0 {
		t.Fatalf("first sight: %v, want none (grace)", got)
	}
	if got := sw.due(t0.Add(9*time.Second), "a:1", members, holders); len(got) != 0 {
		t.Fatalf("within grace: %v", got)
	}
	// d:1 comes back as a member: its absence is forgotten.
	if got := sw.due(t0.Add(10*time.Second), "a:1", append(members, "d:1"), holders); !slices.Equal(got, []string{"c:1"}) {
		t.Fatalf("after grace: %v, want [c:1]", got)
	}
	if got := sw.due(t0.Add(15*time.Second), "a:1", members, holders); !slices.Equal(got, []string{"c:1"}) {
		t.Fatalf("d:1 left again: %v, want [c:1] (d:1's grace restarts)", got)
	}
	if got := sw.due(t0.Add(25*time.Second), "a:1", members, holders); !slices.Equal(got, []string{"c:1", "d:1"}) {
		t.Fatalf("later: %v, want [c:1 d:1]", got)
	}
	// Not the first member: b:1 never drops.
	other := &sessionSweeper{grace: time.Second}
	for i := range 5 {
		if got := other.due(t0.Add(time.Duration(i)*time.Minute), "b:1", members, holders); len(got) != 0 {
			t.Fatalf("b:1 dropped %v", got)
		}
	}
}

// fakeMember is a clusterMember for isMember.
type fakeMember struct {
	st      actors.ClusterStatus
	cluster bool
	lost    chan struct{}
}

func (f fakeMember) Cluster() (actors.ClusterStatus, bool) { return f.st, f.cluster }
func (f fakeMember) Lost() <-chan struct{}                 { return f.lost }

// TestHealthMembership: health is NOT_SERVING while the node is not in its
// own member list or is lost; a node alone is always a member.
func TestHealthMembership(t *testing.T) {
	closed := make(chan struct{})
	close(closed)
	for _, tc := range []struct {
		name string
		f    fakeMember
		want grpchealth.Status
	}{
		{"alone", fakeMember{}, grpchealth.StatusServing},
		{"member", fakeMember{st: actors.ClusterStatus{Self: "a:1", Members: []string{"a:1", "b:1"}}, cluster: true, lost: make(chan struct{})}, grpchealth.StatusServing},
		{"not yet seen", fakeMember{st: actors.ClusterStatus{Self: "a:1", Members: []string{"b:1"}}, cluster: true, lost: make(chan struct{})}, grpchealth.StatusNotServing},
		{"lost", fakeMember{st: actors.ClusterStatus{Self: "a:1", Members: []string{"a:1"}}, cluster: true, lost: closed}, grpchealth.StatusNotServing},
	} {
		h := newStoreHealth(struct{}{}, tc.f)
		res, err := h.Check(context.Background(), &grpchealth.CheckRequest{})
		if err != nil || res.Status != tc.want {
			t.Errorf("%s: %v %v, want %v", tc.name, res, err, tc.want)
		}
	}
}

// TestMetricsNodeLabel: in a cluster every metric of /metrics's registry
// carries node=<advertised address>; alone, none has a node label.
func TestMetricsNodeLabel(t *testing.T) {
	cc, err := clusterconfig.Parse("etcd://127.0.0.1:2379", "", "0.0.0.0:7001", "10.1.2.3:7001")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cc   clusterconfig.Config
		want string
	}{{cc, "10.1.2.3:7001"}, {clusterconfig.Config{}, ""}} {
		reg, metrics := metricsRegistry(tc.cc)
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otafleet_test_total", Help: "test"}, []string{"kind"})
		metrics.MustRegister(c, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "otafleet_test_gauge", Help: "test"}, func() float64 { return 1 }))
		c.WithLabelValues("a").Inc()
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, f := range families {
			for _, m := range f.GetMetric() {
				n++
				node, has := "", false
				for _, l := range m.GetLabel() {
					if l.GetName() == "node" {
						node, has = l.GetValue(), true
					}
				}
				if node != tc.want || has != (tc.want != "") {
					t.Errorf("%s %v: node label %q (present %v), want %q", f.GetName(), m.GetLabel(), node, has, tc.want)
				}
			}
		}
		if n != 2 {
			t.Errorf("%d metrics gathered, want 2", n)
		}
	}
}

// TestThirdPartyRacesOnly: a child's exit 66 is excused only when every
// race report's accesses are inside protoactor-go.
func TestThirdPartyRacesOnly(t *testing.T) {
	exit66 := exec.Command("sh", "-c", "exit 66").Run()
	report := func(frames ...string) []map[string]any {
		// frames: the two accesses' stacks, each frames joined by "|".
		lines := []string{"==================", "WARNING: DATA RACE", "Write at 0x1 by goroutine 1:"}
		for i, stack := range frames {
			if i == 1 {
				lines = append(lines, "Previous read at 0x1 by goroutine 2:")
			}
			for _, fn := range strings.Split(stack, "|") {
				lines = append(lines, "  "+fn+"()", "      /x.go:1")
			}
			lines = append(lines, "")
		}
		lines = append(lines, "==================")
		var out []map[string]any
		for _, l := range lines {
			out = append(out, map[string]any{"msg": "raw", "text": l})
		}
		return out
	}
	theirs := report("github.com/asynkron/protoactor-go/remote.(*BlockList).Block", "github.com/asynkron/protoactor-go/remote.(*BlockList).BlockedMembers")
	ours := report("github.com/asynkron/protoactor-go/remote.(*BlockList).Block", "github.com/otafleet/otafleet/actors.(*node).update")
	if !thirdPartyRacesOnly(t, exit66, theirs) {
		t.Error("a race inside protoactor-go is not excused")
	}
	if thirdPartyRacesOnly(t, exit66, append(theirs, ours...)) {
		t.Error("a race with an access in otafleet's code is excused")
	}
	viaProtobuf := report("github.com/asynkron/protoactor-go/cluster.setKey",
		"google.golang.org/protobuf/internal/impl.appendInt64NoZero|google.golang.org/protobuf/proto.Marshal|github.com/asynkron/protoactor-go/remote.(*protoSerializer).Serialize")
	if !thirdPartyRacesOnly(t, exit66, viaProtobuf) {
		t.Error("a race of protoactor-go's, read through protobuf's marshaling, is not excused")
	}
	oursViaProtobuf := report("github.com/asynkron/protoactor-go/cluster.setKey",
		"google.golang.org/protobuf/proto.Marshal|github.com/otafleet/otafleet/actors.(*node).tell")
	if thirdPartyRacesOnly(t, exit66, oursViaProtobuf) {
		t.Error("a race with otafleet's code marshaling is excused")
	}
	if thirdPartyRacesOnly(t, exit66, report("github.com/asynkron/protoactor-go/cluster.setKey", "sync/atomic.LoadInt32|runtime.goexit")) {
		t.Error("a race with no github.com frame in one access is excused")
	}
	if thirdPartyRacesOnly(t, exec.Command("sh", "-c", "exit 1").Run(), theirs) {
		t.Error("exit 1 is excused")
	}
	if thirdPartyRacesOnly(t, exit66, nil) {
		t.Error("exit 66 without a race report is excused")
	}
}
