package clusterconfig

import (
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		cluster, name, node, adv string
		want                     Config
		err                      string
	}{
		{want: Config{}},
		{name: DefaultName, want: Config{}},
		{cluster: "etcd://127.0.0.1:2379", node: "127.0.0.1:7001",
			want: Config{Etcd: []string{"127.0.0.1:2379"}, Name: DefaultName, NodeAddr: "127.0.0.1:7001", AdvertiseAddr: "127.0.0.1:7001"}},
		{cluster: "etcd://e1:2379,e2:2379,[::1]:2379", name: "fleet-a", node: ":7001", adv: "10.0.0.5:7001",
			want: Config{Etcd: []string{"e1:2379", "e2:2379", "[::1]:2379"}, Name: "fleet-a", NodeAddr: ":7001", AdvertiseAddr: "10.0.0.5:7001"}},
		{cluster: "etcd://e1:2379", node: "0.0.0.0:7001", adv: "node1.example:7001",
			want: Config{Etcd: []string{"e1:2379"}, Name: DefaultName, NodeAddr: "0.0.0.0:7001", AdvertiseAddr: "node1.example:7001"}},

		{node: "127.0.0.1:7001", err: "--node-addr goes with --cluster"},
		{adv: "127.0.0.1:7001", err: "--advertise-addr goes with --cluster"},
		{name: "other", err: "--cluster-name goes with --cluster"},
		{cluster: "http://e1:2379", node: "h:1", err: "--cluster \"http://e1:2379\": want etcd://HOST:PORT"},
		{cluster: "etcd://", node: "h:1", err: "names no etcd endpoint"},
		{cluster: "etcd://e1", node: "h:1", err: "--cluster \"etcd://e1\": endpoint \"e1\": want HOST:PORT"},
		{cluster: "etcd://e1:2379,", node: "h:1", err: "endpoint \"\""},
		{cluster: "etcd://:2379", node: "h:1", err: "names no host"},
		{cluster: "etcd://e1:99999", node: "h:1", err: "port must be a number from 1 to 65535"},
		{cluster: "etcd://u@e1:2379", node: "h:1", err: "is not a host name"},
		{cluster: "etcd://e1:2379", err: "--cluster needs --node-addr"},
		{cluster: "etcd://e1:2379", node: "h", err: "--node-addr \"h\": want HOST:PORT"},
		{cluster: "etcd://e1:2379", node: "h:0", err: "--node-addr \"h:0\": the port must be"},
		{cluster: "etcd://e1:2379", node: ":7001", err: "--node-addr \":7001\" is a wildcard address, which other nodes cannot dial: give --advertise-addr"},
		{cluster: "etcd://e1:2379", node: "[::]:7001", err: "wildcard"},
		{cluster: "etcd://e1:2379", node: "0.0.0.0:7001", adv: "0.0.0.0:7001", err: "--advertise-addr \"0.0.0.0:7001\" is a wildcard address"},
		{cluster: "etcd://e1:2379", node: "h:7001", adv: ":7001", err: "--advertise-addr \":7001\" is a wildcard address"},
		{cluster: "etcd://e1:2379", node: "h:7001", adv: "h2", err: "--advertise-addr \"h2\": want HOST:PORT"},
		{cluster: "etcd://e1:2379", name: "-x", node: "h:1", err: "--cluster-name \"-x\": want 1 to 63"},
		{cluster: "etcd://e1:2379", name: "a/b", node: "h:1", err: "--cluster-name"},
	} {
		got, err := Parse(tc.cluster, tc.name, tc.node, tc.adv)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("Parse(%q, %q, %q, %q) = %+v, %v; want an error with %q", tc.cluster, tc.name, tc.node, tc.adv, got, err, tc.err)
		case tc.err == "" && (err != nil || !reflect.DeepEqual(got, tc.want)):
			t.Errorf("Parse(%q, %q, %q, %q) = %+v, %v; want %+v", tc.cluster, tc.name, tc.node, tc.adv, got, err, tc.want)
		}
	}
}

func TestNode(t *testing.T) {
	c, err := Parse("etcd://e1:2379,e2:2379", "", "0.0.0.0:7001", "10.0.0.5:7001")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Enabled() || c.Node() != "10.0.0.5:7001" || c.EtcdURL() != "etcd://e1:2379,e2:2379" {
		t.Errorf("Enabled %v, Node %q, EtcdURL %q", c.Enabled(), c.Node(), c.EtcdURL())
	}
	if (Config{}).Enabled() || (Config{AdvertiseAddr: "x:1"}).Node() != "" {
		t.Error("a Config without etcd endpoints is a node alone, with no identity")
	}
}
