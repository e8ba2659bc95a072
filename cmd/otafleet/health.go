package main

import (
	"context"
	"time"

	"connectrpc.com/grpchealth"

	"github.com/otafleet/otafleet/persistence"
)

// healthPingTimeout bounds the store's answer to a health check.
const healthPingTimeout = 2 * time.Second

// storeHealth is serve's gRPC health checker: the server as a whole ("")
// is NOT_SERVING while its store does not answer (a PostgreSQL store whose
// server is down or hung: writes fail with a retryable error meanwhile),
// SERVING otherwise; other services are the static checker's (unknown).
type storeHealth struct {
	store  any // a persistence.Pinger, or a store that is always there
	static *grpchealth.StaticChecker
}

func newStoreHealth(store any) *storeHealth {
	return &storeHealth{store: store, static: grpchealth.NewStaticChecker()}
}

// Check implements grpchealth.Checker.
func (h *storeHealth) Check(ctx context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	p, ok := h.store.(persistence.Pinger)
	if req.Service != "" || !ok {
		return h.static.Check(ctx, req)
	}
	ctx, cancel := context.WithTimeout(ctx, healthPingTimeout)
	defer cancel()
	if err := p.Ping(ctx); err != nil {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	}
	return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
}
