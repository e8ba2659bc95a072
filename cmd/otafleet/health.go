package main

import (
	"context"
	"slices"
	"time"

	"connectrpc.com/grpchealth"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/persistence"
)

// healthPingTimeout bounds the store's answer to a health check.
const healthPingTimeout = 2 * time.Second

// storeHealth is serve's gRPC health checker: the server as a whole ("")
// is NOT_SERVING while its store does not answer (a PostgreSQL store whose
// server is down or hung: writes fail with a retryable error meanwhile),
// SERVING otherwise; other services are the static checker's (unknown).
// In a cluster it is NOT_SERVING too while the node is not a member of
// its cluster (before its own registration is seen, and once it is lost).
type storeHealth struct {
	store  any // a persistence.Pinger, or a store that is always there
	member func() bool
	static *grpchealth.StaticChecker
}

// clusterMember is what the health check asks of the engine.
type clusterMember interface {
	Cluster() (actors.ClusterStatus, bool)
	Lost() <-chan struct{}
}

func newStoreHealth(store any, engine clusterMember) *storeHealth {
	h := &storeHealth{store: store, static: grpchealth.NewStaticChecker()}
	if engine != nil {
		h.member = func() bool { return isMember(engine) }
	}
	return h
}

// isMember reports whether the engine runs alone, or is a member of its
// cluster in its own view and not lost.
func isMember(e clusterMember) bool {
	st, ok := e.Cluster()
	if !ok {
		return true
	}
	select {
	case <-e.Lost():
		return false
	default:
	}
	return slices.Contains(st.Members, st.Self)
}

// Check implements grpchealth.Checker.
func (h *storeHealth) Check(ctx context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	if req.Service != "" {
		return h.static.Check(ctx, req)
	}
	if h.member != nil && !h.member() {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	}
	p, ok := h.store.(persistence.Pinger)
	if !ok {
		return h.static.Check(ctx, req)
	}
	ctx, cancel := context.WithTimeout(ctx, healthPingTimeout)
	defer cancel()
	if err := p.Ping(ctx); err != nil {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	}
	return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
}
