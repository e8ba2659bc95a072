package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

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
		{[]string{"--config", writeKey(t, "c.yaml", "cluster: etcd://e:2379\nnode-addr: \":7001\"\n", 0o600)}, "give --advertise-addr"},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), serveArgs(t.TempDir(), tc.args...), &out, &errb)
		if code != exitUsage || !strings.Contains(errb.String(), tc.want) || strings.Contains(errb.String(), "hunter2") {
			t.Errorf("serve %v: exit %d, stderr %q; want %d and %q", tc.args, code, errb.String(), exitUsage, tc.want)
		}
	}
}

// TestClusterNotInThisBuild: a valid --cluster command line stops serve
// with exit 1 and one line saying the engine cannot join a cluster, before
// anything is opened (the database named does not exist); the process's
// exit code is checked on the real binary.
func TestClusterNotInThisBuild(t *testing.T) {
	key := writeKey(t, "k", strings.Repeat("ab", 32)+"\n", 0o600)
	args := serveArgs(t.TempDir(), "--store", "postgres://u@db.invalid/otafleet", "--seal-key-file", key,
		"--cluster", "etcd://127.0.0.1:2379,127.0.0.2:2379", "--cluster-name", "blue", "--node-addr", "0.0.0.0:7001", "--advertise-addr", "10.1.2.3:7001")
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "OTAFLEET_TEST_MAIN=1", envSealKeyFile+"=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(stderr.String(), "the cluster engine is not in this build") {
		t.Fatalf("serve --cluster: %v, stderr %q; want exit 1 and the cluster engine named", err, stderr.String())
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
