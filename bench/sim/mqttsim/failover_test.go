package mqttsim

import (
	"context"
	"net"
	"testing"
)

// TestFailoverToNextBroker: a device with fallback brokers connects to the
// first that answers, and when its broker goes away it reconnects to the
// next one.
func TestFailoverToNextBroker(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "tcp://" + l.Addr().String()
	l.Close()
	a, b := newBroker(t, true), newBroker(t, true)
	const id, secret = "dev-failover", "secret-of-dev-failover"
	a.setSecret(id, secret)
	b.setSecret(id, secret)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	d, err := Start(ctx, Config{Broker: dead, Fallbacks: []string{a.url, b.url}, DeviceID: id, Secret: secret, FwVersion: "1.0"})
	if err != nil {
		t.Fatalf("Start with the first broker away: %v", err)
	}
	t.Cleanup(d.Stop)
	a.waitSession(t, id)
	a.stop()
	b.waitSession(t, id)
	if n := len(b.remoteAddrs(id)); n != 1 {
		t.Errorf("%d sessions on the second fallback, want 1", n)
	}
}
