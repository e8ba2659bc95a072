// Package clusterconfig is a node's place in an otafleet cluster as `serve`
// is told it: the etcd endpoints of the membership, the cluster's name, the
// address the node's protoactor remote listens on and the address the other
// nodes dial. It parses and checks these settings and nothing else; the
// engine (actors) joins the cluster with them. A Config is a plain value,
// safe to copy and share.
package clusterconfig

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// DefaultName is the cluster name when none is given.
const DefaultName = "otafleet"

// Scheme prefixes the etcd endpoints of --cluster.
const Scheme = "etcd://"

// Config is one node's cluster settings. The zero Config is a node that
// runs alone (Enabled is false).
type Config struct {
	// Etcd are the etcd endpoints (host:port) of the membership, in the
	// order given; none: the node runs alone.
	Etcd []string
	// Name is the cluster's name: nodes of one name form one cluster (it
	// keys their membership in etcd).
	Name string
	// NodeAddr is the host:port the node's protoactor remote listens on.
	NodeAddr string
	// AdvertiseAddr is the host:port the other nodes dial to reach this
	// one (NodeAddr unless the node is behind NAT). It is the node's
	// identity: its metrics' node label, and the owner of the transport
	// sessions it holds (persistence.NodeSessions).
	AdvertiseAddr string
}

// Enabled reports whether the node joins a cluster.
func (c Config) Enabled() bool { return len(c.Etcd) > 0 }

// Node is the node's identity, its advertised address; "" when it runs
// alone.
func (c Config) Node() string {
	if !c.Enabled() {
		return ""
	}
	return c.AdvertiseAddr
}

// EtcdURL is the endpoints as --cluster takes them (etcd://H:P,H:P).
func (c Config) EtcdURL() string { return Scheme + strings.Join(c.Etcd, ",") }

// ParseEtcd parses etcd://HOST:PORT[,HOST:PORT...] into its endpoints.
func ParseEtcd(s string) ([]string, error) {
	rest, ok := strings.CutPrefix(s, Scheme)
	if !ok {
		return nil, fmt.Errorf("%q: want etcd://HOST:PORT[,HOST:PORT...]", s)
	}
	if rest == "" {
		return nil, fmt.Errorf("%q names no etcd endpoint: want etcd://HOST:PORT[,HOST:PORT...]", s)
	}
	var eps []string
	for _, ep := range strings.Split(rest, ",") {
		if err := checkHostPort(ep, false); err != nil {
			return nil, fmt.Errorf("%q: endpoint %w (want etcd://HOST:PORT[,HOST:PORT...])", s, err)
		}
		eps = append(eps, ep)
	}
	return eps, nil
}

// Flags are the flags' names, for errors.
const (
	FlagCluster   = "--cluster"
	FlagName      = "--cluster-name"
	FlagNodeAddr  = "--node-addr"
	FlagAdvertise = "--advertise-addr"
)

// Parse checks the flags' values and returns the Config: cluster is
// --cluster ("" runs alone), name --cluster-name ("" is DefaultName),
// nodeAddr --node-addr and advertise --advertise-addr ("" is nodeAddr).
// Without --cluster, --node-addr, --advertise-addr and a --cluster-name
// other than the default are errors (they would do nothing). The errors
// name the flag at fault and say what it wants.
func Parse(cluster, name, nodeAddr, advertise string) (Config, error) {
	if cluster == "" {
		switch {
		case nodeAddr != "":
			return Config{}, errors.New(FlagNodeAddr + " goes with " + FlagCluster)
		case advertise != "":
			return Config{}, errors.New(FlagAdvertise + " goes with " + FlagCluster)
		case name != "" && name != DefaultName:
			return Config{}, errors.New(FlagName + " goes with " + FlagCluster)
		}
		return Config{}, nil
	}
	eps, err := ParseEtcd(cluster)
	if err != nil {
		return Config{}, fmt.Errorf("%s %w", FlagCluster, err)
	}
	if name == "" {
		name = DefaultName
	}
	if !validName.MatchString(name) {
		return Config{}, fmt.Errorf("%s %q: want 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", FlagName, name)
	}
	if nodeAddr == "" {
		return Config{}, fmt.Errorf("%s needs %s HOST:PORT, the address this node's actors listen on for the other nodes", FlagCluster, FlagNodeAddr)
	}
	if err := checkHostPort(nodeAddr, true); err != nil {
		return Config{}, fmt.Errorf("%s %w", FlagNodeAddr, err)
	}
	adv, flag := advertise, FlagAdvertise
	if adv == "" {
		adv, flag = nodeAddr, FlagNodeAddr
	}
	if wildcard(adv) {
		if flag == FlagNodeAddr {
			return Config{}, fmt.Errorf("%s %q is a wildcard address, which other nodes cannot dial: give %s HOST:PORT, the address they reach this node at", FlagNodeAddr, nodeAddr, FlagAdvertise)
		}
		return Config{}, fmt.Errorf("%s %q is a wildcard address, which other nodes cannot dial: give the address they reach this node at", FlagAdvertise, adv)
	}
	if err := checkHostPort(adv, false); err != nil {
		return Config{}, fmt.Errorf("%s %w", FlagAdvertise, err)
	}
	return Config{Etcd: eps, Name: name, NodeAddr: nodeAddr, AdvertiseAddr: adv}, nil
}

// validName is a cluster name: it becomes part of etcd keys.
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// checkHostPort checks a host:port with a port from 1 to 65535; with
// emptyHost an empty host (":7000", every interface) is taken too.
func checkHostPort(s string, emptyHost bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q: want HOST:PORT ([IPv6]:PORT for an IPv6 address)", s)
	}
	if host == "" && !emptyHost {
		return fmt.Errorf("%q names no host: want HOST:PORT", s)
	}
	if strings.ContainsAny(host, " /,@?#") {
		return fmt.Errorf("%q: %q is not a host name or IP address", s, host)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("%q: the port must be a number from 1 to 65535 (a fixed port: other nodes dial it)", s)
	}
	return nil
}

// wildcard reports whether host:port names no particular host: an empty
// host, 0.0.0.0 or ::.
func wildcard(hostPort string) bool {
	host, _, err := net.SplitHostPort(hostPort)
	if err != nil {
		return false // not a host:port at all: checkHostPort says so
	}
	if host == "" {
		return true
	}
	a, perr := netip.ParseAddr(host)
	return perr == nil && a.IsUnspecified()
}
