package rpc_test

import (
	"context"
	"testing"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// TestGetClusterStatusAlone: a server without a cluster answers with
// itself: its live actors by kind and the LwM2M sessions in its store
// (not the download handles, kept as sessions of another transport).
func TestGetClusterStatusAlone(t *testing.T) {
	te := newTaskEnv(t, []memtransport.DeviceSpec{lwm2mSpec("d1"), lwm2mSpec("d2"), lwm2mSpec("d3")})
	ctx := context.Background()
	for _, id := range []string{"d1", "d2"} {
		if err := te.store.PutSession(ctx, "lwm2m", id, []byte("reg")); err != nil {
			t.Fatal(err)
		}
	}
	if err := te.store.PutSession(ctx, "download-handles", "h1", []byte("x")); err != nil {
		t.Fatal(err)
	}
	c := otafleetv1connect.NewClusterServiceClient(te.http, te.url)
	res, err := c.GetClusterStatus(ctx, connect.NewRequest(&otafleetv1.GetClusterStatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	m := res.Msg
	if m.GetClustered() || len(m.GetNodes()) != 1 || len(m.GetOrphanSessions()) != 0 {
		t.Fatalf("alone: %v", m)
	}
	n := m.GetNodes()[0]
	live := te.eng.Live()
	if !n.GetSelf() || n.GetAddress() != "" || n.GetSessions() != 2 || n.GetError() != "" || live["device"] != 3 {
		t.Fatalf("node %v (engine's live actors %v); want self, 2 sessions, 3 devices", n, live)
	}
	for k, v := range live {
		if n.GetLive()[k] != uint32(v) {
			t.Errorf("live %s = %d, engine says %d", k, n.GetLive()[k], v)
		}
	}
}
