package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/otafleet/otafleet/internal/etcdtest"
)

// freeAddr returns 127.0.0.1:PORT with a port free a moment ago (a node's
// --node-addr takes no port 0).
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// clusterNode is a child `serve --cluster` process.
type clusterNode struct {
	*server
	dir  string
	addr string // its --node-addr (and advertised address)
	api  string
}

// processClusterLease is the process tests' nodes' etcd lease: longer
// than the default 3 s, which a node starved on a loaded two-core machine
// missed now and then (it dropped out of the cluster and exited before the
// campaign began: 3 runs of 22 of TestProcessClusterKillNode).
const processClusterLease = "6s"

// startClusterNode starts a node of cluster name on etcd and the store,
// with the device listeners of extra (serveArgs turns them off), and waits
// until it serves.
func startClusterNode(ctx context.Context, t *testing.T, etcd *etcdtest.Server, name string, store processStore, extra ...string) *clusterNode {
	t.Helper()
	n := &clusterNode{dir: t.TempDir(), addr: freeAddr(t)}
	args := serveArgs(n.dir, append(append([]string{"--cluster", "etcd://" + strings.TrimPrefix(etcd.URL(), "http://"),
		"--cluster-name", name, "--node-addr", n.addr, "--cluster-lease", processClusterLease}, store.args...), extra...)...)
	n.server = startServer(t, args[1:]...)
	n.server.await(ctx, "node "+n.addr+" serving", msg("serving"))
	b, err := os.ReadFile(filepath.Join(n.dir, "addrs.json"))
	if err != nil {
		t.Fatal(err)
	}
	var addrs map[string]string
	if err := json.Unmarshal(b, &addrs); err != nil {
		t.Fatal(err)
	}
	n.api = addrs["api"]
	return n
}

// TestProcessClusterNodeLost: `serve --cluster` joins (health SERVING);
// when its etcd registration goes, it logs one line saying so and exits 1.
func TestProcessClusterNodeLost(t *testing.T) {
	etcd := etcdtest.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	store := newProcessStore(t, t.TempDir(), true)
	name := etcd.NewCluster("lost")
	n := startClusterNode(ctx, t, etcd, name, store)
	if st := healthStatus(t, n.api); st != "SERVING_STATUS_SERVING" {
		t.Fatalf("health of a member: %s", st)
	}
	// otafleet cluster status: a one-node cluster lists itself.
	tok := readToken(t, n.dir)
	code, out, errOut := runCLI("cluster", "status", "--api", n.api, "--token", tok, "--json")
	var st struct {
		Clustered bool
		Nodes     []struct {
			Address string
			Self    bool
			Live    map[string]int
		}
	}
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || !st.Clustered || len(st.Nodes) != 1 || st.Nodes[0].Address != n.addr || !st.Nodes[0].Self {
		t.Fatalf("cluster status --json: exit %d, %s %s", code, out, errOut)
	}
	code, out, errOut = runCLI("cluster", "status", "--api", n.api, "--token", tok)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != 2 || !strings.HasPrefix(lines[0], "NODE") ||
		!strings.HasPrefix(lines[1], n.addr) || !strings.Contains(lines[1], "*") {
		t.Fatalf("cluster status: exit %d, %q %s", code, out, errOut)
	}
	if code, _, errOut := runCLI("cluster", "status", "extra", "--api", n.api, "--token", tok); code != exitUsage {
		t.Errorf("cluster status extra: exit %d (%s), want %d", code, errOut, exitUsage)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.URL()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, "/otafleet/"+name+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatalf("%d etcd keys under the cluster, want the node's 1", len(resp.Kvs))
	}
	if _, err := cli.Delete(ctx, string(resp.Kvs[0].Key)); err != nil {
		t.Fatal(err)
	}
	err, lines := n.wait(ctx)
	code = -1
	if n.cmd.ProcessState != nil {
		code = n.cmd.ProcessState.ExitCode()
	}
	said := false
	for _, m := range lines {
		if s, _ := m["msg"].(string); strings.Contains(s, "no longer a member of its cluster") {
			said = true
		}
	}
	if code != 1 || !said {
		t.Fatalf("lost node: exit %d (%v), said so %v; want exit 1 and the line", code, err, said)
	}
}

// thirdPartyRacesOnly reports whether err is the race detector's exit
// status (66) of a child whose every race report (in its log lines) has
// both accesses inside protoactor-go (or its github.com/asynkron/gofun
// sets: the first github.com frame of each access's stack), whose pinned
// version races with
// itself in its cluster code (remote.BlockList is unlocked: README
// "Cluster"); a race with an access in any other code is not excused.
func thirdPartyRacesOnly(t *testing.T, err error, lines []map[string]any) bool {
	t.Helper()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 66 {
		return false
	}
	races, excused := 0, 0
	inReport, wantFrame, ok := false, false, true
	var report []string
	for _, m := range lines {
		text, _ := m["text"].(string)
		if inReport {
			report = append(report, text)
		}
		switch {
		case strings.Contains(text, "WARNING: DATA RACE"):
			races++
			inReport, ok, report = true, true, nil
		case !inReport:
		case strings.HasPrefix(text, "=================="):
			inReport = false
			if ok {
				excused++
			} else if races-excused == 1 {
				t.Logf("a race report not excused (not inside protoactor-go):\n%s", strings.Join(report[:min(len(report), 60)], "\n"))
			}
		case strings.HasPrefix(text, "Write at") || strings.HasPrefix(text, "Read at") ||
			strings.HasPrefix(text, "Previous write at") || strings.HasPrefix(text, "Previous read at"):
			wantFrame = true
		case wantFrame && strings.HasPrefix(strings.TrimSpace(text), "github.com/"):
			// The access's first frame in a module: frames of the
			// standard library and of google.golang.org/protobuf (which
			// protoactor marshals its gossip with) above it are skipped.
			wantFrame = false
			if !strings.HasPrefix(strings.TrimSpace(text), "github.com/asynkron/") { // protoactor-go and its gofun
				ok = false
			}
		case wantFrame && strings.TrimSpace(text) == "":
			wantFrame = false // a stack with no github.com frame at all
			ok = false
		}
	}
	if races == 0 || excused != races {
		return false
	}
	t.Logf("the child's %d race report(s) are all inside protoactor-go (its cluster races with itself)", races)
	return true
}
