package actors

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
)

// TestAwaitReplyOwnerLeaves: a request to a node that never answers (killed
// with it in hand) ends as soon as that node leaves the membership, not
// after requestTimeout; a topology change that keeps it waits on, and an
// answer is returned (issue 23: a report held for 30 s held the device's
// next exchanges).
func TestAwaitReplyOwnerLeaves(t *testing.T) {
	sys := actor.NewActorSystem()
	defer sys.Shutdown()
	silent := sys.Root.Spawn(actor.PropsFromFunc(func(actor.Context) {}))
	n := &node{members: map[string]bool{"a:1": true, "b:2": true}, tick: make(chan struct{})}
	setMembers := func(ms ...string) {
		set := map[string]bool{}
		for _, m := range ms {
			set[m] = true
		}
		n.mu.Lock()
		n.members = set
		n.mu.Unlock()
		n.bump(func() { n.gen++ })
	}
	limit := clock.Real().NewTimer(10 * time.Second)
	defer limit.Stop()

	f := sys.Root.RequestFuture(silent, &messages.ClusterRequest{}, time.Minute)
	errc := make(chan error, 1)
	go func() {
		_, err := n.awaitReply(context.Background(), f, "b:2")
		errc <- err
	}()
	setMembers("a:1", "b:2", "c:3") // b stays
	setMembers("a:1", "c:3")        // b leaves
	select {
	case err := <-errc:
		if !errors.Is(err, errOwnerLeft) {
			t.Fatalf("awaitReply: %v, want errOwnerLeft", err)
		}
	case <-limit.C():
		t.Fatal("awaitReply still waits 10 s after the owner left")
	}

	// An owner that answers: its reply, whatever the topology does.
	echo := sys.Root.Spawn(actor.PropsFromFunc(func(c actor.Context) {
		if r, ok := c.Message().(*messages.ClusterRequest); ok {
			c.Respond(&messages.ClusterReply{Error: r.GetId()})
		}
	}))
	f = sys.Root.RequestFuture(echo, &messages.ClusterRequest{Id: "x"}, time.Minute)
	res, err := n.awaitReply(context.Background(), f, "c:3")
	if r, ok := res.(*messages.ClusterReply); err != nil || !ok || r.GetError() != "x" {
		t.Fatalf("awaitReply: %v, %v; want the owner's reply", res, err)
	}
}
