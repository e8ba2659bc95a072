package rpc

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/persistence"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// registered counts the registry's devices per product, for GetFleetSummary:
// counted once when the handler is built (one walk of the registry, before
// the API serves) and kept up to date by CreateDevices and DeleteDevice, so a
// summary costs O(products). The API is the registry's only writer while it
// serves (other writers — another node of a cluster, an offline store copy —
// are seen at the next start).
type registered struct {
	mu sync.Mutex
	n  map[string]int64 // by product ID; no zero entries
}

// countRegistered walks the registry's devices once.
func countRegistered(ctx context.Context, reg persistence.Registry) (*registered, error) {
	r := &registered{n: map[string]int64{}}
	after := ""
	for {
		ds, err := reg.ListDevices(ctx, after, persistence.MaxListLimit)
		if err != nil {
			return nil, fmt.Errorf("rpc: counting the registered devices: %w", err)
		}
		for _, d := range ds {
			r.n[d.ProductID]++
		}
		if len(ds) < persistence.MaxListLimit {
			return r, nil
		}
		after = ds[len(ds)-1].ID
	}
}

// add counts n devices more (fewer when negative) of product.
func (r *registered) add(product string, n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v := r.n[product] + n; v > 0 {
		r.n[product] = v
	} else {
		delete(r.n, product)
	}
}

func (r *registered) counts() map[string]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.n)
}

// deviceCounts builds DeviceCounts. A device can be online a moment before
// its creation is counted, or after its deletion (a session that ends at
// its next message); offline never goes below zero.
func deviceCounts(registered, online int64) *v1.DeviceCounts {
	return &v1.DeviceCounts{Registered: registered, Online: online, Offline: max(registered-online, 0)}
}

func (s *deviceServer) GetFleetSummary(ctx context.Context, req *connect.Request[v1.GetFleetSummaryRequest]) (*connect.Response[v1.GetFleetSummaryResponse], error) {
	only := req.Msg.GetProductId()
	if only != "" {
		if _, err := s.product(ctx, "GetFleetSummary", only); err != nil {
			return nil, err
		}
	}
	reg := s.registered.counts()
	on := s.presence.Counts()
	products := slices.Sorted(maps.Keys(reg))
	if only != "" {
		products = []string{only}
	}
	out := &v1.GetFleetSummaryResponse{Products: make([]*v1.ProductDeviceCounts, 0, len(products))}
	var total, online int64
	for _, p := range products {
		n, o := reg[p], int64(on[p])
		total += n
		online += o
		out.Products = append(out.Products, &v1.ProductDeviceCounts{ProductId: p, Devices: deviceCounts(n, o)})
	}
	out.Total = deviceCounts(total, online)
	return connect.NewResponse(out), nil
}
