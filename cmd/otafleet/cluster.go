package main

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/otafleet/otafleet/internal/clusterconfig"
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
	if err != nil || !cc.Enabled() {
		return err
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

// errNoClusterEngine stops serve --cluster in a build whose engine cannot
// join a cluster yet.
var errNoClusterEngine = errors.New("--cluster: the cluster engine is not in this build; this otafleet runs only alone (without --cluster)")

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
