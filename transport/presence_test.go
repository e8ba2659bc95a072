package transport_test

import (
	"maps"
	"testing"

	"github.com/otafleet/otafleet/transport"
)

func TestPresence(t *testing.T) {
	type op struct {
		do      string // up, down, forget
		via     transport.Via
		id, pid string
	}
	tests := []struct {
		name string
		ops  []op
		want map[string]int
		on   []string
	}{
		{"one device", []op{{"up", transport.ViaMQTT, "d1", "p"}}, map[string]int{"p": 1}, []string{"d1"}},
		{"up twice is one", []op{{"up", transport.ViaLwM2M, "d1", "p"}, {"up", transport.ViaLwM2M, "d1", "p"}}, map[string]int{"p": 1}, []string{"d1"}},
		{"down", []op{{"up", transport.ViaMQTT, "d1", "p"}, {"down", transport.ViaMQTT, "d1", ""}}, map[string]int{}, nil},
		{"down twice", []op{{"up", transport.ViaMQTT, "d1", "p"}, {"up", transport.ViaMQTT, "d2", "p"}, {"down", transport.ViaMQTT, "d1", ""}, {"down", transport.ViaMQTT, "d1", ""}}, map[string]int{"p": 1}, []string{"d2"}},
		{"down of an unknown device", []op{{"down", transport.ViaLwM2M, "d1", ""}}, map[string]int{}, nil},
		{"two transports: online until both are down", []op{
			{"up", transport.ViaMQTT, "d1", "p"}, {"up", transport.ViaLwM2M, "d1", "p"}, {"down", transport.ViaMQTT, "d1", ""},
		}, map[string]int{"p": 1}, []string{"d1"}},
		{"two transports: both down", []op{
			{"up", transport.ViaMQTT, "d1", "p"}, {"up", transport.ViaLwM2M, "d1", "p"}, {"down", transport.ViaMQTT, "d1", ""}, {"down", transport.ViaLwM2M, "d1", ""},
		}, map[string]int{}, nil},
		{"down of the other transport changes nothing", []op{
			{"up", transport.ViaMQTT, "d1", "p"}, {"down", transport.ViaLwM2M, "d1", ""},
		}, map[string]int{"p": 1}, []string{"d1"}},
		{"forget, then the adapter's down", []op{
			{"up", transport.ViaMQTT, "d1", "p"}, {"up", transport.ViaLwM2M, "d1", "p"}, {"forget", 0, "d1", ""}, {"down", transport.ViaMQTT, "d1", ""},
		}, map[string]int{}, nil},
		{"products apart", []op{
			{"up", transport.ViaMQTT, "a1", "a"}, {"up", transport.ViaLwM2M, "b1", "b"}, {"up", transport.ViaLwM2M, "b2", "b"}, {"down", transport.ViaLwM2M, "b1", ""},
		}, map[string]int{"a": 1, "b": 1}, []string{"a1", "b2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := transport.NewPresence()
			for _, o := range tt.ops {
				switch o.do {
				case "up":
					p.Up(o.via, o.id, o.pid)
				case "down":
					p.Down(o.via, o.id)
				case "forget":
					p.Forget(o.id)
				}
			}
			if got := p.Counts(); !maps.Equal(got, tt.want) {
				t.Errorf("Counts() = %v, want %v", got, tt.want)
			}
			for _, id := range []string{"d1", "d2", "a1", "b1", "b2"} {
				want := false
				for _, o := range tt.on {
					want = want || o == id
				}
				if got := p.Online(id); got != want {
					t.Errorf("Online(%q) = %v, want %v", id, got, want)
				}
			}
		})
	}
}

func TestPresenceNil(t *testing.T) {
	var p *transport.Presence
	p.Up(transport.ViaMQTT, "d", "p")
	p.Down(transport.ViaMQTT, "d")
	p.Forget("d")
	if p.Online("d") || len(p.Counts()) != 0 {
		t.Fatal("a nil Presence counts")
	}
}

// TestPresenceRegistered: a session that started before its device was
// registered is counted under its product once the device is created.
func TestPresenceRegistered(t *testing.T) {
	p := transport.NewPresence()
	p.Up(transport.ViaSim, "s1", "")
	p.Up(transport.ViaSim, "s2", "")
	p.Up(transport.ViaMQTT, "m1", "a")
	p.Registered("b", []string{"s1", "m1", "offline"})
	if got, want := p.Counts(), map[string]int{"": 1, "b": 2}; !maps.Equal(got, want) {
		t.Fatalf("Counts() = %v, want %v", got, want)
	}
	if p.Online("offline") {
		t.Fatal("Registered brought an offline device online")
	}
	p.Down(transport.ViaSim, "s1")
	p.Down(transport.ViaMQTT, "m1")
	if got, want := p.Counts(), map[string]int{"": 1}; !maps.Equal(got, want) {
		t.Fatalf("after Down: Counts() = %v, want %v", got, want)
	}
}
