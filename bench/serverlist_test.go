package bench

import (
	"slices"
	"testing"
)

// TestServerList: a list is split, trimmed and rotated to start at i mod
// its length; a single address is itself.
func TestServerList(t *testing.T) {
	for _, tc := range []struct {
		list string
		i    int
		want []string
	}{
		{"a:1", 5, []string{"a:1"}},
		{"a:1, b:2,c:3", 0, []string{"a:1", "b:2", "c:3"}},
		{"a:1,b:2,c:3", 4, []string{"b:2", "c:3", "a:1"}},
		{"a:1,,b:2,", 1, []string{"b:2", "a:1"}},
		{"", 3, []string{""}},
	} {
		if got := ServerList(tc.list, tc.i); !slices.Equal(got, tc.want) {
			t.Errorf("ServerList(%q, %d) = %q, want %q", tc.list, tc.i, got, tc.want)
		}
	}
}

// TestSpreadEveryProtocol: the devices of each protocol of a mixed fleet
// start on every server of a list of three (a rotation by device index
// would put each protocol on one server).
func TestSpreadEveryProtocol(t *testing.T) {
	f := Fleet{Protocols: []string{ProtoMQTT, ProtoLwM2M, ProtoPCP}, Devices: 300, Prefix: "dev-", Cells: 4}
	for _, p := range f.Protocols {
		on := map[string]int{}
		for _, id := range f.IDs(p) {
			on[ServerList("a,b,c", spread(id))[0]]++
		}
		for _, s := range []string{"a", "b", "c"} {
			if on[s] < 15 {
				t.Errorf("%s devices per server %v: %s has fewer than 15 of 100", p, on, s)
			}
		}
	}
}
