package lwm2m_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pebblestore"
	"github.com/otafleet/otafleet/persistence/pgstore"
	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/lwm2m"
)

// TestRegistrationsSurviveRestart: a server with Sessions reads its
// plain-CoAP registrations back after a restart, so it reaches a device at
// once (not at the device's next update), and the device's own next update
// finds the registration it knows. Expired and de-registered devices are
// not kept; kept records that do not decode, or whose device is gone, are
// dropped.
func TestRegistrationsSurviveRestart(t *testing.T) {
	ctx := context.Background()
	ps, err := pebblestore.Open(t.TempDir(), pebblestore.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	// Each server counts its devices online in a Presence of its own, as a
	// restarted process starts with an empty one.
	p1, p2 := transport.NewPresence(), transport.NewPresence()
	withSessions := func(addr string, p *transport.Presence) func(*lwm2m.Config) {
		return func(c *lwm2m.Config) {
			c.Sessions, c.Presence = ps, p
			if addr != "" {
				c.Addr = addr
			}
		}
	}
	e1 := newEnv(t, withSessions("", p1))
	d1, d2 := dial(t, e1), dial(t, e1)
	d1.set("/3/0/3", resource{message.TextPlain, []byte("1.0")})
	if res, err := d1.register(t, "ep=d1&lt=600&b=UQ", links); err != nil || res.Code() != codes.Created {
		t.Fatalf("register d1: %v %v", res, err)
	}
	e1.rec.next(t)
	if res, err := d2.register(t, "ep=d2&lt=60", links); err != nil || res.Code() != codes.Created {
		t.Fatalf("register d2: %v %v", res, err)
	}
	e1.rec.next(t)
	kept := func() map[string]string {
		got := map[string]string{}
		if err := ps.ListSessions(ctx, "lwm2m", func(id string, v []byte) error { got[id] = string(v); return nil }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := kept(); len(got) != 2 {
		t.Fatalf("kept registrations: %v, want d1 and d2", got)
	}
	if got := p1.Counts(); !maps.Equal(got, map[string]int{"p": 2}) {
		t.Fatalf("online: %v, want d1 and d2", got)
	}
	// d2's lifetime runs out: it is no longer kept.
	e1.clk.Advance(61 * time.Second)
	for got := e1.rec.next(t); got != "d2 disconnected:{}"; got = e1.rec.next(t) {
		if !strings.HasPrefix(got, "d1 ") {
			t.Fatalf("waiting for d2 to expire: %q", got)
		}
	}
	if got := kept(); len(got) != 1 || got["d1"] == "" {
		t.Fatalf("kept after d2 expired: %v, want d1", got)
	}
	if got := p1.Counts(); !maps.Equal(got, map[string]int{"p": 1}) || !p1.Online("d1") {
		t.Fatalf("online after d2 expired: %v, want d1", got)
	}
	// Records that cannot be used.
	for id, v := range map[string]string{
		"d2":    "{not json",
		"ghost": `{"id":"x1","peer":"127.0.0.1:4000","lifetime_s":60}`,
	} {
		if err := ps.PutSession(ctx, "lwm2m", id, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	addr := e1.srv.Addr()
	if err := e1.srv.Close(); err != nil {
		t.Fatal(err)
	}

	e2 := newEnv(t, withSessions(addr, p2))
	if got := kept(); len(got) != 1 || got["d1"] == "" {
		t.Fatalf("kept after the restart: %v, want only d1 (the bad records dropped)", got)
	}
	// The restored registration is online from the start; the dropped
	// records are not.
	if got := p2.Counts(); !maps.Equal(got, map[string]int{"p": 1}) || !p2.Online("d1") {
		t.Fatalf("online after the restart: %v, want d1", got)
	}
	// A queue-mode device is taken as asleep until it sends something.
	if got := e2.rec.next(t); got != "d1 asleep:{}" {
		t.Fatalf("restored queue-mode device: %q", got)
	}
	if err := e2.srv.Send(ctx, &messages.Downlink{DeviceId: "d1", Kind: &messages.Downlink_Lwm2MRead{Lwm2MRead: &messages.Lwm2MRead{Path: "/3/0/3"}}}); err != nil {
		t.Fatalf("send to the restored registration: %v", err)
	}
	if got := e2.rec.next(t); got != `d1 version_reported:{fw_version:"1.0"} no_ack:true` {
		t.Fatalf("read after the restart: %q", got)
	}
	err = e2.srv.Send(ctx, &messages.Downlink{DeviceId: "d2", Kind: &messages.Downlink_Lwm2MRead{Lwm2MRead: &messages.Lwm2MRead{Path: "/3/0/3"}}})
	if err == nil || !strings.Contains(err.Error(), "not registered") {
		t.Fatalf("send to the expired d2: %v, want not registered", err)
	}
	res, err := d1.conn.Post(ctx, d1.loc, message.TextPlain, nil)
	if err != nil || res.Code() != codes.Changed {
		t.Fatalf("d1's update after the restart: %v %v, want 2.04", res, err)
	}
	if got := e2.rec.next(t); got != "d1 uplink:{registration_update:true}" {
		t.Fatalf("after the update: %q", got)
	}
	// De-registering forgets it.
	if res, err := d1.conn.Delete(ctx, d1.loc); err != nil || res.Code() != codes.Deleted {
		t.Fatalf("de-register: %v %v", res, err)
	}
	e2.rec.next(t)
	if got := kept(); len(got) != 0 {
		t.Fatalf("kept after de-registering: %v", got)
	}
	if got := p2.Counts(); len(got) != 0 {
		t.Fatalf("online after de-registering: %v", got)
	}
}

var _ persistence.Sessions = (*pebblestore.Store)(nil)

// TestRegistrationsHeldByNode: on a store the nodes of a cluster share,
// each server keeps its registrations as its node's (Config.Node): another
// node starting restores none of them, the node itself restarting restores
// its own, and once a node's sessions are dropped (it left the cluster)
// nobody restores them. A store of one node refuses a Node.
func TestRegistrationsHeldByNode(t *testing.T) {
	ctx := context.Background()
	ps, err := pgstore.Open(ctx, pgtest.NewDatabase(t), pgstore.Options{SealKey: bytes.Repeat([]byte{7}, 32), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	onNode := func(node string) func(*lwm2m.Config) {
		return func(c *lwm2m.Config) { c.Sessions, c.Node = ps, node }
	}
	const n1, n2 = "10.0.0.1:7001", "10.0.0.2:7001"
	e1 := newEnv(t, onNode(n1))
	d1 := dial(t, e1)
	if res, err := d1.register(t, "ep=d1&lt=600&b=UQ", links); err != nil || res.Code() != codes.Created {
		t.Fatalf("register d1: %v %v", res, err)
	}
	e1.rec.next(t)
	held := func(node string) int {
		n := 0
		if err := ps.NodeSessions(node).ListSessions(ctx, "lwm2m", func(string, []byte) error { n++; return nil }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if held(n1) != 1 || held(n2) != 0 || held("") != 0 {
		t.Fatalf("registrations held by n1, n2, every node: %d %d %d; want 1 0 0", held(n1), held(n2), held(""))
	}
	if err := e1.srv.Close(); err != nil {
		t.Fatal(err)
	}
	read := &messages.Downlink{DeviceId: "d1", Kind: &messages.Downlink_Lwm2MRead{Lwm2MRead: &messages.Lwm2MRead{Path: "/3/0/3"}}}

	// Another node does not restore n1's registration, nor drop it.
	e2 := newEnv(t, onNode(n2))
	if err := e2.srv.Send(ctx, read); err == nil || !strings.Contains(err.Error(), "not registered") {
		t.Fatalf("node n2 sends to n1's device: %v, want not registered", err)
	}
	if err := e2.srv.Close(); err != nil {
		t.Fatal(err)
	}
	if held(n1) != 1 {
		t.Fatal("node n2's start dropped n1's registration")
	}
	// n1 restarting restores it (a queue-mode device, taken as asleep).
	e3 := newEnv(t, onNode(n1))
	if got := e3.rec.next(t); got != "d1 asleep:{}" {
		t.Fatalf("n1's restored registration: %q", got)
	}
	if err := e3.srv.Close(); err != nil {
		t.Fatal(err)
	}
	// n1 is gone: its sessions are dropped, and nobody restores them.
	if n, err := ps.DropNodeSessions(ctx, n1); err != nil || n != 1 {
		t.Fatalf("DropNodeSessions(n1) = %d, %v; want 1", n, err)
	}
	e4 := newEnv(t, onNode(n1))
	if err := e4.srv.Send(ctx, read); err == nil || !strings.Contains(err.Error(), "not registered") {
		t.Fatalf("send after n1's sessions were dropped: %v, want not registered", err)
	}

	// Pebble keeps one node's sessions: a Node is refused.
	pb, err := pebblestore.Open(t.TempDir(), pebblestore.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer pb.Close()
	_, err = lwm2m.New(lwm2m.Config{Addr: "127.0.0.1:0", Devices: pb, Packages: pb, Tokens: e4.dl, Uplinks: e4.rec, Sessions: pb, Node: n1})
	if !errors.Is(err, persistence.ErrInvalid) {
		t.Fatalf("New with a Node over Pebble: %v, want ErrInvalid", err)
	}
}
