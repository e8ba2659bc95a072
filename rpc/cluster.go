package rpc

import (
	"context"
	"errors"
	"slices"
	"time"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/persistence"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// lwm2mSessions is the transport name under which transport/lwm2m keeps
// its registrations in the store (its sessionTransport): the sessions a
// node holds.
const lwm2mSessions = "lwm2m"

// clusterAskTimeout bounds GetClusterStatus's questions to the other
// members.
const clusterAskTimeout = 5 * time.Second

// clusterServer implements ClusterService.
type clusterServer struct {
	*server
	sessions persistence.Sessions // nil: no session counts
}

// GetClusterStatus lists the members with their live actors and sessions.
func (s *clusterServer) GetClusterStatus(ctx context.Context, _ *connect.Request[v1.GetClusterStatusRequest]) (*connect.Response[v1.GetClusterStatusResponse], error) {
	res := &v1.GetClusterStatusResponse{}
	st, clustered := s.engine.Cluster()
	if !clustered {
		n := &v1.ClusterNode{Self: true, Live: liveCounts(s.engine.Live())}
		c, err := s.countSessions(ctx, "")
		if err != nil {
			return nil, toConnect(s.log, "GetClusterStatus", err)
		}
		n.Sessions = c
		res.Nodes = []*v1.ClusterNode{n}
		return connect.NewResponse(res), nil
	}
	res.Clustered = true
	actx, cancel := context.WithTimeout(ctx, clusterAskTimeout)
	nodes, _ := s.engine.ClusterNodes(actx)
	cancel()
	for _, ns := range nodes {
		n := &v1.ClusterNode{Address: ns.Addr, Self: ns.Addr == st.Self}
		if ns.Err != nil {
			n.Error = ns.Err.Error()
		} else {
			n.Live = liveCounts(ns.Live)
		}
		c, err := s.countSessions(ctx, ns.Addr)
		if err != nil {
			return nil, toConnect(s.log, "GetClusterStatus", err)
		}
		n.Sessions = c
		res.Nodes = append(res.Nodes, n)
	}
	slices.SortFunc(res.Nodes, func(a, b *v1.ClusterNode) int {
		switch {
		case a.Address < b.Address:
			return -1
		case a.Address > b.Address:
			return 1
		}
		return 0
	})
	if ns, ok := s.sessions.(persistence.NodeSessions); ok {
		var holders []string
		if err := ns.SessionNodes(ctx, func(node string) error { holders = append(holders, node); return nil }); err != nil {
			return nil, toConnect(s.log, "GetClusterStatus", err)
		}
		for _, h := range holders {
			if h == "" || slices.Contains(st.Members, h) {
				continue
			}
			c, err := s.countSessions(ctx, h)
			if err != nil {
				return nil, toConnect(s.log, "GetClusterStatus", err)
			}
			if c > 0 {
				if res.OrphanSessions == nil {
					res.OrphanSessions = map[string]uint64{}
				}
				res.OrphanSessions[h] = c
			}
		}
	}
	return connect.NewResponse(res), nil
}

// countSessions counts the LwM2M sessions node holds ("" a node alone).
func (s *clusterServer) countSessions(ctx context.Context, node string) (uint64, error) {
	if s.sessions == nil {
		return 0, nil
	}
	ss, err := persistence.SessionsOf(s.sessions, node)
	if errors.Is(err, persistence.ErrInvalid) {
		return 0, nil // a store without holders: no node's sessions apart
	}
	if err != nil {
		return 0, err
	}
	var n uint64
	err = ss.ListSessions(ctx, lwm2mSessions, func(string, []byte) error { n++; return nil })
	return n, err
}

// liveCounts converts the engine's live actors by kind.
func liveCounts(m map[string]int) map[string]uint32 {
	out := make(map[string]uint32, len(m))
	for k, v := range m {
		out[k] = uint32(max(v, 0))
	}
	return out
}
