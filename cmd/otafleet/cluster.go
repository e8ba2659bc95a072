package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/internal/clusterconfig"
	"github.com/otafleet/otafleet/persistence"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// clusterConfig is the node's cluster settings (--cluster, --cluster-name,
// --node-addr, --advertise-addr); the zero Config without --cluster.
func (c serveConfig) clusterConfig() (clusterconfig.Config, error) {
	return clusterconfig.Parse(c.Cluster, c.ClusterName, c.NodeAddr, c.AdvertiseAddr)
}

// checkCluster checks the cluster settings and what they need of the
// others.
func (c serveConfig) checkCluster() error {
	cc, err := c.clusterConfig()
	if err != nil {
		return err
	}
	if !cc.Enabled() {
		if c.ClusterLease != actors.DefaultLease {
			return errors.New("--cluster-lease goes with --cluster")
		}
		return nil
	}
	spec, err := parseStore(c.Store)
	if err != nil {
		return fmt.Errorf("--store %w", err)
	}
	switch {
	case spec.postgres == "":
		return errors.New("--cluster needs a postgres:// --store: the nodes of a cluster share one store, and a Pebble store belongs to one process")
	case c.MQTTBroker != "":
		return errors.New("--cluster does not go with --mqtt-broker: every node would subscribe to every device's topics under one client ID; let each node run its embedded broker (--mqtt-addr) behind the load balancer")
	}
	return nil
}

// errNodeLost ends serve (exit 1) when its node dropped out of the
// cluster's membership (actors.Engine.Lost).
var errNodeLost = errors.New("this node is no longer a member of its cluster (its etcd registration expired or was replaced); restart it to join again")

// sessionDropGrace is how long a node holding sessions in the store must
// stay out of the membership before its sessions are dropped: longer than
// the time a starting node takes to be seen by the others (it restores its
// own sessions as it joins), so that a node just started keeps them.
const sessionDropGrace = 15 * time.Second

// sessionSweepEvery is how often a node compares the store's session
// holders with the membership.
const sessionSweepEvery = 2 * time.Second

// sessionSweeper drops the store's sessions of nodes that left the
// cluster, so that nobody restores them: their devices register again
// with the nodes they reach. Only the first member (in byte order) of a
// node's view drops them; two nodes doing so at once (views differ for a
// moment) is harmless, since DropNodeSessions is idempotent.
type sessionSweeper struct {
	grace  time.Duration
	absent map[string]time.Time // node -> when it was first seen holding sessions out of the membership
}

// due returns the session holders to drop at now: those out of the
// membership for grace or longer, when self is the first member. holders
// are the store's session nodes ("" is every node's and never dropped).
func (s *sessionSweeper) due(now time.Time, self string, members, holders []string) []string {
	if s.absent == nil {
		s.absent = map[string]time.Time{}
	}
	in := make(map[string]bool, len(members))
	for _, m := range members {
		in[m] = true
	}
	seen := make(map[string]bool, len(holders))
	var drop []string
	for _, h := range holders {
		if h == "" || h == self || in[h] {
			continue
		}
		seen[h] = true
		since, ok := s.absent[h]
		if !ok {
			s.absent[h] = now
			continue
		}
		if now.Sub(since) >= s.grace && len(members) > 0 && slices.Min(members) == self {
			drop = append(drop, h)
		}
	}
	for h := range s.absent {
		if !seen[h] {
			delete(s.absent, h) // back in the membership, or its sessions are gone
		}
	}
	return drop
}

// startSessionSweeper runs a sessionSweeper every sessionSweepEvery until
// ctx ends or the returned stop is called.
func startSessionSweeper(ctx context.Context, engine *actors.Engine, store persistence.NodeSessions, clk clock.Clock, logger *slog.Logger) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sw := &sessionSweeper{grace: sessionDropGrace}
		t := clk.NewTimer(sessionSweepEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-engine.Lost():
				return
			case <-t.C():
			}
			t.Reset(sessionSweepEvery)
			st, ok := engine.Cluster()
			if !ok {
				return
			}
			var holders []string
			if err := store.SessionNodes(ctx, func(n string) error { holders = append(holders, n); return nil }); err != nil {
				if ctx.Err() == nil {
					logger.Warn("listing the nodes that hold sessions", "error", err)
				}
				continue
			}
			for _, n := range sw.due(clk.Now(), st.Self, st.Members, holders) {
				k, err := store.DropNodeSessions(ctx, n)
				if err != nil {
					if ctx.Err() == nil {
						logger.Warn("dropping the sessions of a node that left the cluster", "node", n, "error", err)
					}
					continue
				}
				logger.Info("dropped the sessions of a node that left the cluster", "node", n, "sessions", k)
			}
		}
	}()
	return func() { cancel(); <-done }
}

// metricsRegistry is the registry /metrics serves and the registerer every
// part of serve registers its metrics with. In a cluster every metric
// carries the label node=<the node's advertised address>, so the nodes'
// series stay apart when one Prometheus scrapes them all; a node alone
// registers them as they are.
func metricsRegistry(cc clusterconfig.Config) (*prometheus.Registry, prometheus.Registerer) {
	reg := prometheus.NewRegistry()
	if !cc.Enabled() {
		return reg, reg
	}
	return reg, prometheus.WrapRegistererWith(prometheus.Labels{"node": cc.Node()}, reg)
}

// clusterStatusHeader is `otafleet cluster status`'s table header.
var clusterStatusHeader = []string{"NODE", "SELF", "DEVICES", "CELLS", "TASKS", "SESSIONS", "ERROR"}

// clusterStatusRows is the table of `otafleet cluster status`: one row
// per member, then one per node that left with sessions not yet dropped.
func clusterStatusRows(res *v1.GetClusterStatusResponse) [][]string {
	var rows [][]string
	for _, n := range res.GetNodes() {
		addr := n.GetAddress()
		if !res.GetClustered() {
			addr = "(alone)"
		}
		self := ""
		if n.GetSelf() {
			self = "*"
		}
		live := func(k string) string {
			if n.GetError() != "" {
				return "-"
			}
			return strconv.FormatUint(uint64(n.GetLive()[k]), 10)
		}
		rows = append(rows, []string{addr, self, live("device"), live("cell"), live("task"),
			strconv.FormatUint(n.GetSessions(), 10), orDash(n.GetError())})
	}
	orphans := slices.Sorted(maps.Keys(res.GetOrphanSessions()))
	for _, h := range orphans {
		rows = append(rows, []string{h, "", "-", "-", "-", strconv.FormatUint(res.GetOrphanSessions()[h], 10), "left the cluster"})
	}
	return rows
}

func clusterStatus(o *clientOpts) *cobra.Command {
	return &cobra.Command{
		Use: "status", Short: "List the members, their live actors by kind and the device sessions each holds", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return callShow(o, cmd, func(ctx context.Context, c *client) (*connect.Response[v1.GetClusterStatusResponse], error) {
				return c.cluster.GetClusterStatus(ctx, connect.NewRequest(&v1.GetClusterStatusRequest{}))
			}, func(res *v1.GetClusterStatusResponse) error {
				return o.table(clusterStatusHeader, clusterStatusRows(res))
			})
		},
	}
}
