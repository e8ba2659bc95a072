package clusterconfig

import (
	"reflect"
	"testing"
)

// FuzzParse: whatever the flags hold, Parse returns a Config or an error,
// never panics; a Config it returns names a node other nodes can dial and
// parses again to itself.
func FuzzParse(f *testing.F) {
	f.Add("etcd://127.0.0.1:2379", "", "127.0.0.1:7001", "")
	f.Add("etcd://e1:2379,e2:2379,[::1]:2379", "fleet-a", ":7001", "10.0.0.5:7001")
	f.Add("etcd://", "x", "[::]:1", "")
	f.Add("", "", "", "")
	f.Fuzz(func(t *testing.T, cluster, name, node, adv string) {
		c, err := Parse(cluster, name, node, adv)
		if err != nil || !c.Enabled() {
			return
		}
		if wildcard(c.AdvertiseAddr) || checkHostPort(c.AdvertiseAddr, false) != nil || c.Node() != c.AdvertiseAddr {
			t.Fatalf("Parse(%q, %q, %q, %q) = %+v: an advertised address other nodes cannot dial", cluster, name, node, adv, c)
		}
		again, err := Parse(c.EtcdURL(), c.Name, c.NodeAddr, c.AdvertiseAddr)
		if err != nil || !reflect.DeepEqual(again, c) {
			t.Fatalf("Parse of %+v's own flags = %+v, %v", c, again, err)
		}
	})
}
