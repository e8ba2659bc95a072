package lwm2msim

import (
	"context"
	"testing"
	"time"

	"github.com/otafleet/otafleet/internal/clock/clocktest"
)

// TestFailoverToNextServer: a device with fallback servers registers with
// the first that answers, and when its server goes away (ICMP
// port-unreachable closes its connection) it registers with the next one
// from a new socket, without waiting for the lost one to come back.
func TestFailoverToNextServer(t *testing.T) {
	a, b, c := newTestServer(t), newTestServer(t), newTestServer(t)
	a.down() // away from the start: Start goes on to b
	clk := clocktest.New(t0)
	events, hook := hookCh()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	d, err := Start(ctx, Config{Server: a.addr, Fallbacks: []string{b.addr, c.addr}, Endpoint: "dev-failover", FwVersion: "1.0",
		Behaviour: Behaviour{RestartDelay: time.Second}, Clock: clk, hook: hook})
	if err != nil {
		t.Fatalf("Start with the first server away: %v", err)
	}
	t.Cleanup(d.Stop)
	b.waitEvent(t, "register")
	waitHook(t, events, "registered")
	if got := d.Server(); got != b.addr {
		t.Fatalf("registered with %s, want the first fallback %s", got, b.addr)
	}
	b.down()
	if err := d.Wake(); err == nil {
		t.Fatal("registration update to a closed server socket succeeded")
	}
	waitHook(t, events, "restarting")
	clk.Advance(time.Second)
	c.waitEvent(t, "register")
	waitHook(t, events, "registered")
	if got := d.Server(); got != c.addr {
		t.Fatalf("registered again with %s, want %s", got, c.addr)
	}
	if err := d.Wake(); err != nil {
		t.Errorf("Wake after failing over: %v", err)
	}
	c.waitEvent(t, "update")
	if st := d.Stats(); st.Registrations != 2 || st.Reconnects != 1 {
		t.Errorf("stats %+v, want 2 registrations and 1 reconnection", st)
	}
	// c goes away too, a is back: the list wraps around.
	c.down()
	a.up(t)
	if err := d.Wake(); err == nil {
		t.Fatal("registration update to a closed server socket succeeded")
	}
	waitHook(t, events, "restarting")
	clk.Advance(time.Second)
	a.waitEvent(t, "register")
	waitHook(t, events, "registered")
	if got := d.Server(); got != a.addr {
		t.Fatalf("registered again with %s, want %s (the list wraps)", got, a.addr)
	}
}
