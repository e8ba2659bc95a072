package main

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/actors/cell/cellfsm"
	"github.com/otafleet/otafleet/actors/device/devicefsm"
	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/internal/clusterconfig"
	"github.com/otafleet/otafleet/internal/gctune"
	"github.com/otafleet/otafleet/internal/minrate"
	"github.com/otafleet/otafleet/persistence/pgstore"
	"github.com/otafleet/otafleet/transport/download"
	"github.com/otafleet/otafleet/transport/mqtt"
)

// serveConfig is everything `otafleet serve` takes. Each field is set by one
// row of the settings table (a flag, and the config-file key of the same
// name); flags given on the command line win over the file.
type serveConfig struct {
	DataDir string
	// Store is --store: "" (Pebble in DataDir), pebble:DIR or a
	// postgres:// URL (see parseStore).
	Store string
	// StorePasswordFile is --store-password-file: a file holding the
	// PostgreSQL password (see withPasswordFile).
	StorePasswordFile string
	// StoreTimeout bounds each journal call to PostgreSQL
	// (pgstore.Options.Timeout).
	StoreTimeout time.Duration
	APIAddr      string
	// APITokenFile is --api-token-file: the API token from a file rather
	// than from the data folder (Pebble) or the store (PostgreSQL).
	APITokenFile string
	LogFormat    string
	LogLevel     string

	// Engine is the engine's configuration. The table sets the protocol
	// timeouts of spec 6.1 (T1..T10), the cells' budget, costs and range
	// bounds (decision 1) and PassivateAfter in it; engineConfig adds the
	// timeouts derived from them.
	Engine actors.Config
	// TokenTTL is T11, the download tokens' lifetime.
	TokenTTL time.Duration

	// Device transports: the embedded MQTT broker and the package download
	// server ("" disables a listener).
	MQTTAddr  string
	MQTTSAddr string
	// What a device may cost the embedded broker (0: no limit).
	MQTTRequireTimestamp        bool
	MQTTConnectTimeout          time.Duration
	MQTTMaxConnections          int
	MQTTMaxConnectionsPerSource int
	MQTTLoginFailuresPerDevice  int
	MQTTLoginFailuresPerSource  int
	MQTTUplinkRate              float64
	MQTTUplinkBurst             int
	// External broker mode.
	MQTTBroker        string
	MQTTClientID      string
	MQTTProbeInterval time.Duration
	DownloadAddr      string
	CoAPAddr          string
	CoAPPublic        string
	CoAPSAddr         string
	CoAPSPublic       string
	DownloadTLS       bool
	DownloadURL       string
	TLSCert           string
	TLSKey            string
	// PackageCacheBytes bounds the package images the download paths
	// (HTTP, CoAP Block2, PCP segments) serve from memory.
	PackageCacheBytes int64
	// GCHeapFloor is the heap the garbage collector lets grow before a
	// collection while devices have jobs (internal/gctune; 0: off).
	GCHeapFloor int64

	// The HTTP servers (API and package downloads): connection limits,
	// timeouts before and between requests, and the minimum transfer rate
	// of request and response bodies (see internal/minrate).
	APIMaxConns       int
	DownloadMaxConns  int
	HTTPHeaderTimeout time.Duration
	HTTPIdleTimeout   time.Duration
	MinTransferRate   int64
	MinTransferWindow time.Duration

	// The cluster (see clusterConfig): --cluster, --cluster-name,
	// --node-addr, --advertise-addr and --cluster-lease.
	Cluster       string
	ClusterName   string
	NodeAddr      string
	AdvertiseAddr string
	ClusterLease  time.Duration

	VerifyStore bool
	// The key sealing device secrets and PSKs in the store, and the one it
	// replaces (rotation).
	SealKeyFile         string
	PreviousSealKeyFile string

	// Simulation: in-process simulated devices, for demos and tests.
	Simulate         int
	SimulateProtocol string
	SimulateCells    int
	SimulateCampaign bool
	SimulateDelay    time.Duration
}

// defaultServeConfig is every setting's default. The engine's settings take
// the engine's defaults (the spec's timeouts), the transports' theirs.
func defaultServeConfig() serveConfig {
	return serveConfig{
		DataDir:           "otafleet-data",
		StoreTimeout:      pgstore.DefaultTimeout,
		ClusterName:       clusterconfig.DefaultName,
		ClusterLease:      actors.DefaultLease,
		APIAddr:           "127.0.0.1:8080",
		LogFormat:         "text",
		LogLevel:          "info",
		Engine:            actors.Config{}.Default(),
		TokenTTL:          download.DefaultTTL,
		MQTTAddr:          "127.0.0.1:1883",
		DownloadAddr:      "127.0.0.1:8943",
		CoAPAddr:          "127.0.0.1:5683",
		CoAPSAddr:         "127.0.0.1:5684",
		DownloadTLS:       true,
		MQTTClientID:      "otafleet",
		MQTTProbeInterval: time.Minute,
		APIMaxConns:       1024,
		DownloadMaxConns:  10000,
		PackageCacheBytes: download.DefaultImageBytes,
		GCHeapFloor:       gctune.DefaultFloor,
		HTTPHeaderTimeout: 30 * time.Second,
		HTTPIdleTimeout:   2 * time.Minute,
		MinTransferRate:   128,
		MinTransferWindow: time.Minute,
		SimulateProtocol:  "fota",
		SimulateCells:     10,
		SimulateDelay:     50 * time.Millisecond,

		MQTTConnectTimeout:          mqtt.DefaultConnectTimeout,
		MQTTMaxConnections:          mqtt.DefaultMaxConnections,
		MQTTMaxConnectionsPerSource: mqtt.DefaultMaxConnectionsPerSource,
		MQTTLoginFailuresPerDevice:  mqtt.DefaultLoginFailuresPerDevice,
		MQTTLoginFailuresPerSource:  mqtt.DefaultLoginFailuresPerSource,
		MQTTUplinkRate:              mqtt.DefaultUplinkRate,
		MQTTUplinkBurst:             mqtt.DefaultUplinkBurst,
	}
}

// setting is one row of the settings table: the flag and config-file key
// name, bound to one field of serveConfig.
type setting struct {
	name  string
	usage string // the flag's help
	// field is the field the setting sets in c: a *string, *bool, *int,
	// *int64, *uint32, *float64 or *time.Duration, or a *rangeBounds bound
	// to four fields.
	field func(c *serveConfig) any
	// engine is, for a setting of the engine, the same field in an
	// actors.Config (nil for the others).
	engine func(e *actors.Config) any
	// check reports a value of the field the setting refuses (nil: any is
	// taken); the rules between settings are in validate.
	check func(c serveConfig) error
}

// value is what a setting holds.
type value interface {
	string | bool | int | int64 | uint32 | float64 | time.Duration
}

// opt is a setting bound to a field of serveConfig; checks each say why a
// value is refused.
func opt[T value](name string, field func(*serveConfig) *T, usage string, checks ...func(T) error) setting {
	return setting{
		name: name, usage: usage,
		field: func(c *serveConfig) any { return field(c) },
		check: func(c serveConfig) error {
			for _, check := range checks {
				if err := check(*field(&c)); err != nil {
					return fmt.Errorf("--%s %w", name, err)
				}
			}
			return nil
		},
	}
}

// engineOpt is a setting bound to a field of the engine's configuration,
// which validates it with the others (actors.Config.Validate).
func engineOpt[T value](name string, field func(*actors.Config) *T, usage string, checks ...func(T) error) setting {
	s := opt(name, func(c *serveConfig) *T { return field(&c.Engine) }, usage, checks...)
	s.engine = func(e *actors.Config) any { return field(e) }
	return s
}

// boundsOpt is a setting bound to the four range bounds of one radio metric
// in the engine's cell configuration (cellfsm.Config), given as one comma
// list, lowest first.
func boundsOpt(name string, bounds func(*cellfsm.Config) rangeBounds, usage string) setting {
	return setting{
		name: name, usage: usage,
		field:  func(c *serveConfig) any { b := bounds(&c.Engine.Cell); return &b },
		engine: func(e *actors.Config) any { b := bounds(&e.Cell); return &b },
		check:  func(serveConfig) error { return nil }, // cellfsm.Config.Validate orders them
	}
}

// settings is the table of `otafleet serve`'s settings: each row is a flag,
// the config-file key of the same name, the field it sets (its default in
// defaultServeConfig) and the checks of its value; the engine's rows set
// the engine's configuration. Adding a protocol timeout is a field in
// devicefsm.Config with its default there, and a row here; the same for a
// cell setting in cellfsm.Config. The engine validates its settings as a
// whole (actors.Config.Validate); engineErr names the flags in its errors.
//
// Two MQTT timeouts derive from --timeout-online (T1) and have no row:
//   - The MQTT online wait (devicefsm.Config.OnlineMQTT) is T1 + 1 h: spec
//     6.1 T1 waits 24 h for an LwM2M device and up to 25 h for an MQTT one
//     (the MQTT firmware seed). devicefsm.OnlineMQTTFor is that rule, for
//     the defaults and engineConfig alike.
//   - With --mqtt-broker, a device a job waits for is probed with
//     version_query for an hour beyond that wait, T1 + 2 h (probeFor): the
//     job's deadline ends the wait, and the probing must not stop first.
func settings() []setting {
	return []setting{
		opt("data-dir", func(c *serveConfig) *string { return &c.DataDir },
			"folder of the journal, registry, api-token and addrs.json", nonEmpty),
		opt("store", func(c *serveConfig) *string { return &c.Store },
			"where the journal, registry and packages live: pebble:DIR, or postgres://USER@HOST[:PORT]/DATABASE?sslmode=... (the password from the URL, PGPASSWORD or PGPASSFILE; needs --seal-key-file); default: pebble in --data-dir. To move an installation: otafleet store copy"),
		opt("store-password-file", func(c *serveConfig) *string { return &c.StorePasswordFile },
			"with a postgres:// --store: a file (mode 0600) whose first line is the database user's password, instead of the URL, PGPASSWORD or PGPASSFILE; never logged"),
		opt("store-timeout", func(c *serveConfig) *time.Duration { return &c.StoreTimeout },
			"with a postgres:// --store: how long a journal write or read waits for PostgreSQL; past it the store counts as unavailable: the command or device report fails with a retryable error (devices are not acknowledged) and the actor tries again once PostgreSQL answers", positive),
		opt("api-addr", func(c *serveConfig) *string { return &c.APIAddr },
			"address of the API, gRPC health and /metrics (HTTP/1.1 and h2c); port 0 picks one"),
		opt("api-token-file", func(c *serveConfig) *string { return &c.APITokenFile },
			"a file (mode 0600) whose first line is the API token (at least 32 characters; make one with: openssl rand -hex 32), the same on every node of a cluster; default: the token in --data-dir/api-token (Pebble), or the one the store keeps (PostgreSQL; created by the first node). serve writes the token it accepts to --data-dir/api-token for the client verbs"),
		opt("log-format", func(c *serveConfig) *string { return &c.LogFormat },
			"log format: text or json", oneOf("text", "json")),
		opt("log-level", func(c *serveConfig) *string { return &c.LogLevel },
			"log level: debug, info, warn or error", oneOf("debug", "info", "warn", "error")),
		// The protocol timeouts of spec 6.1, set in the engine's configuration
		// (which checks them); T1's MQTT derivatives are in the comment above.
		engineOpt("timeout-online", func(e *actors.Config) *time.Duration { return &e.Device.Online },
			"T1: wait for the device to come online (LwM2M; MQTT waits one hour more)"),
		engineOpt("timeout-version-report", func(e *actors.Config) *time.Duration { return &e.Device.VersionReport },
			"T2: wait for the version report"),
		engineOpt("timeout-radio-query", func(e *actors.Config) *time.Duration { return &e.Device.RadioQuery },
			"T3: wait for RSRP, SINR and cell ID"),
		engineOpt("timeout-cell-query", func(e *actors.Config) *time.Duration { return &e.Device.CellQuery },
			"T4: wait for the cell ID alone"),
		engineOpt("timeout-download-start", func(e *actors.Config) *time.Duration { return &e.Device.DownloadStart },
			"T5: wait for the device to start downloading"),
		engineOpt("timeout-download", func(e *actors.Config) *time.Duration { return &e.Device.Download },
			"T6: download window, from the notification"),
		engineOpt("timeout-mqtt-result", func(e *actors.Config) *time.Duration { return &e.Device.MQTTResult },
			"T7: MQTT download, upgrade and report, from the notification"),
		engineOpt("timeout-update-start", func(e *actors.Config) *time.Duration { return &e.Device.UpdateStart },
			"T8: wait for the device to start updating"),
		engineOpt("timeout-update-result", func(e *actors.Config) *time.Duration { return &e.Device.UpdateResult },
			"T9: wait for the upgrade result"),
		engineOpt("timeout-version-check", func(e *actors.Config) *time.Duration { return &e.Device.VersionCheck },
			"T10: version re-check after the result"),
		// T11 is the download server's (transport/download).
		opt("token-ttl", func(c *serveConfig) *time.Duration { return &c.TokenTTL },
			"T11: download token lifetime (used by the download server)", positive),
		// The embedded MQTT broker and what a device may cost it (0: no limit).
		opt("mqtt-addr", func(c *serveConfig) *string { return &c.MQTTAddr },
			"embedded MQTT broker for IoTDA devices, plain MQTT (--mqtts-addr adds TLS); not started with --mqtt-broker; port 0 picks one; \"\" turns it off"),
		opt("mqtts-addr", func(c *serveConfig) *string { return &c.MQTTSAddr },
			"embedded MQTT broker over TLS (e.g. 127.0.0.1:8883), with the --tls-cert certificate; \"\" (default) turns it off"),
		opt("mqtt-require-timestamp", func(c *serveConfig) *bool { return &c.MQTTRequireTimestamp },
			"embedded broker: accept only sign type 1 client IDs (the timestamp is checked, so a captured password expires); sign type 0 is refused as a bad client ID"),
		opt("mqtt-connect-timeout", func(c *serveConfig) *time.Duration { return &c.MQTTConnectTimeout },
			"embedded broker: a new connection must send its CONNECT (at most 4 KiB) within this", positive),
		opt("mqtt-max-connections", func(c *serveConfig) *int { return &c.MQTTMaxConnections },
			"embedded broker: most open connections in all (0: no limit)", notNegative),
		opt("mqtt-max-connections-per-source", func(c *serveConfig) *int { return &c.MQTTMaxConnectionsPerSource },
			"embedded broker: most open connections from one IP address; devices behind a carrier NAT share one (0: no limit)", notNegative),
		opt("mqtt-login-failures-per-device", func(c *serveConfig) *int { return &c.MQTTLoginFailuresPerDevice },
			"embedded broker: failed logins of one device allowed per minute; beyond them its logins are refused (0x05) unchecked (0: no limit)", notNegative),
		opt("mqtt-login-failures-per-source", func(c *serveConfig) *int { return &c.MQTTLoginFailuresPerSource },
			"embedded broker: failed logins from one IP address allowed per minute; beyond them its logins are refused (0x05) unchecked (0: no limit)", notNegative),
		opt("mqtt-uplink-rate", func(c *serveConfig) *float64 { return &c.MQTTUplinkRate },
			"embedded broker: reports a second each device may publish, beyond --mqtt-uplink-burst; one beyond is refused, not acknowledged (0: no limit)", notNegative),
		opt("mqtt-uplink-burst", func(c *serveConfig) *int { return &c.MQTTUplinkBurst },
			"embedded broker: reports a device may publish at once before --mqtt-uplink-rate applies", atLeast(1)),
		// External broker mode.
		opt("mqtt-broker", func(c *serveConfig) *string { return &c.MQTTBroker },
			"use this external MQTT 3.1.1 broker (tcp://[user:pass@]host:port or ssl://...) instead of the embedded one; see the README for its required settings"),
		opt("mqtt-client-id", func(c *serveConfig) *string { return &c.MQTTClientID },
			"with --mqtt-broker: the client ID of otafleet's persistent session"),
		opt("mqtt-probe-interval", func(c *serveConfig) *time.Duration { return &c.MQTTProbeInterval },
			"with --mqtt-broker: how often a device a job waits for is sent version_query again"),
		// The LwM2M server and the package download server.
		opt("coap-addr", func(c *serveConfig) *string { return &c.CoAPAddr },
			"LwM2M server over CoAP/UDP (registration, device management, firmware packages block-wise); \"\" turns it off"),
		opt("coaps-addr", func(c *serveConfig) *string { return &c.CoAPSAddr },
			"LwM2M server over DTLS 1.2 with pre-shared keys (identity: the device ID); \"\" turns it off"),
		opt("coap-public-addr", func(c *serveConfig) *string { return &c.CoAPPublic },
			"host:port LwM2M devices reach --coap-addr under, written into package URIs; default: the listener's address"),
		opt("coaps-public-addr", func(c *serveConfig) *string { return &c.CoAPSPublic },
			"host:port LwM2M devices reach --coaps-addr under, written into the coaps:// package URIs of devices registered over DTLS; default: the listener's address"),
		opt("download-addr", func(c *serveConfig) *string { return &c.DownloadAddr },
			"package download server for MQTT devices (HTTP range requests, bearer tokens); \"\" turns it off"),
		opt("download-tls", func(c *serveConfig) *bool { return &c.DownloadTLS },
			"serve downloads over HTTPS (false: plain HTTP)"),
		opt("download-url", func(c *serveConfig) *string { return &c.DownloadURL },
			"base URL devices download from (e.g. https://ota.example.com:8943); default: the --download-addr listener's address", httpURL),
		opt("tls-cert", func(c *serveConfig) *string { return &c.TLSCert },
			"PEM certificate for HTTPS downloads and MQTTS (give every node of a cluster the same); default: a self-signed one kept in the data dir, or with a postgres:// --store in the store, where the first node makes it and every node serves it (a copy lands in the data dir as download-cert.pem)"),
		opt("tls-key", func(c *serveConfig) *string { return &c.TLSKey },
			"PEM private key of --tls-cert"),
		opt("package-cache-bytes", func(c *serveConfig) *int64 { return &c.PackageCacheBytes },
			"memory for package images: each package is read from the store and checked once, then served from memory to every device (HTTP ranges, CoAP blocks, PCP segments); images no download reads are evicted, least recently used first, and a package that does not fit is read from the store per request (0: no images)", notNegative),
		opt("gc-heap-floor", func(c *serveConfig) *int64 { return &c.GCHeapFloor },
			"while devices have upgrade jobs, the Go heap may grow to this many bytes before a garbage collection (GOGC rises above 100 to allow it; GOMEMLIMIT still holds): fewer collections of a small, fast-allocating heap, for up to this much more memory while upgrading; an idle node keeps GOGC 100; 0, or GOGC set in the environment, turns it off", notNegative),
		// The HTTP servers (API and package downloads).
		opt("api-max-conns", func(c *serveConfig) *int { return &c.APIMaxConns },
			"most connections the API serves at once; more wait to be accepted", atLeast(1)),
		opt("download-max-conns", func(c *serveConfig) *int { return &c.DownloadMaxConns },
			"most connections the package download server serves at once; more wait to be accepted", atLeast(1)),
		opt("http-header-timeout", func(c *serveConfig) *time.Duration { return &c.HTTPHeaderTimeout },
			"API and download server: time for a request's headers (and the TLS handshake) to arrive", positive),
		opt("http-idle-timeout", func(c *serveConfig) *time.Duration { return &c.HTTPIdleTimeout },
			"API and download server: a kept-alive connection with no request in flight is closed after this long", positive),
		opt("min-transfer-rate", func(c *serveConfig) *int64 { return &c.MinTransferRate },
			"API and download server: bytes per second a request or response body must move at least, measured over --min-transfer-window of transfer time (waits between messages of a stream do not count); 0 turns it off"),
		opt("min-transfer-window", func(c *serveConfig) *time.Duration { return &c.MinTransferWindow },
			"the window of --min-transfer-rate: each rate × window bytes must move within one window"),
		// The cells' radio budget (spec 1.3, decision 1), which
		// cellfsm.Config.Validate checks as a whole.
		engineOpt("cell-budget", func(e *actors.Config) *uint32 { return &e.Cell.Budget },
			"radio units each cell lends out at once, across all tasks"),
		engineOpt("cell-cost-good", func(e *actors.Config) *uint32 { return &e.Cell.CostGood },
			"units a device with good coverage costs (1..--cell-budget)"),
		engineOpt("cell-cost-medium", func(e *actors.Config) *uint32 { return &e.Cell.CostMedium },
			"units a device with medium coverage costs (1..--cell-budget)"),
		engineOpt("cell-cost-poor", func(e *actors.Config) *uint32 { return &e.Cell.CostPoor },
			"units a device with poor coverage, or a radio value outside every range, costs (1..--cell-budget)"),
		engineOpt("cell-cost-cell-only", func(e *actors.Config) *uint32 { return &e.Cell.CostCellOnly },
			"units a device costs when only its cell ID is known (1..--cell-budget)"),
		boundsOpt("cell-rsrp-bounds", func(c *cellfsm.Config) rangeBounds {
			return rangeBounds{&c.RSRPPoorMin, &c.RSRPMediumMin, &c.RSRPGoodMin, &c.RSRPMax}
		}, "RSRP ranges in dBm, as POOR,MEDIUM,GOOD,MAX: poor from POOR, medium from MEDIUM, good from GOOD up to MAX (inclusive); a value outside is out of range"),
		boundsOpt("cell-sinr-bounds", func(c *cellfsm.Config) rangeBounds {
			return rangeBounds{&c.SINRPoorMin, &c.SINRMediumMin, &c.SINRGoodMin, &c.SINRMax}
		}, "SINR ranges in dB, as POOR,MEDIUM,GOOD,MAX: poor from POOR, medium from MEDIUM, good from GOOD up to MAX (inclusive); a value outside is out of range"),
		// Tasks.
		engineOpt("task-max-in-flight", func(e *actors.Config) *int { return &e.Task.MaxInFlight },
			"most devices of one task upgrading at once (the others wait, in order, and start as those end); 0: no limit, the cells' radio budgets alone pace a task. Set it when the server, not the radio, is the bottleneck: every started device's steps run against 3-minute deadlines", notNegative),
		// The engine and the store.
		engineOpt("passivate-after", func(e *actors.Config) *time.Duration { return &e.PassivateAfter },
			"idle device and cell actors leave memory after this long", positive),
		opt("verify-store", func(c *serveConfig) *bool { return &c.VerifyStore },
			"check every journal entry, record and blob at start (a full scan); without it, entries are checked when read, and those of actors with work in flight at every start"),
		opt("seal-key-file", func(c *serveConfig) *string { return &c.SealKeyFile },
			"file holding the key that seals device secrets and PSKs in the store: 32 bytes as 64 hex digits, mode 0600 (make one with: openssl rand -hex 32); default $"+envSealKeyFile+"; without it the store keeps its own key. A store that keeps its own key is re-sealed under this one at start"),
		opt("previous-seal-key-file", func(c *serveConfig) *string { return &c.PreviousSealKeyFile },
			"with --seal-key-file: the key file the store was sealed with until now; a store sealed with it is re-sealed under --seal-key-file at start, all at once (key rotation, Pebble or PostgreSQL; stop every node of a PostgreSQL store first)"),
		// The cluster (internal/clusterconfig checks the four together).
		opt("cluster", func(c *serveConfig) *string { return &c.Cluster },
			"join a cluster whose membership is kept in etcd: etcd://HOST:PORT[,HOST:PORT...]; needs a postgres:// --store (the one store of every node), --seal-key-file and --node-addr. Default: the node runs alone"),
		opt("cluster-name", func(c *serveConfig) *string { return &c.ClusterName },
			"with --cluster: the cluster's name; nodes of one name on one etcd form one cluster"),
		opt("node-addr", func(c *serveConfig) *string { return &c.NodeAddr },
			"with --cluster: HOST:PORT this node's actors listen on for the other nodes (a fixed port; an empty host or 0.0.0.0 listens on every interface)"),
		opt("advertise-addr", func(c *serveConfig) *string { return &c.AdvertiseAddr },
			"with --cluster: HOST:PORT the other nodes dial to reach this one, when it is not --node-addr (behind NAT, or --node-addr listens on every interface); not a wildcard address. It names the node: the node label of its metrics, the owner of its devices' sessions"),
		opt("cluster-lease", func(c *serveConfig) *time.Duration { return &c.ClusterLease },
			"with --cluster: the TTL of this node's etcd lease, whole seconds (1s to 1m): when this node dies the others take over its devices, cells and tasks this long after its last keep-alive; a node whose keep-alives are late by this much (a stalled or starved process) drops out of the cluster and exits. Longer rides out stalls, shorter fails over sooner", leaseRange),
		// Simulation: in-process simulated devices, for demos and tests.
		opt("simulate", func(c *serveConfig) *int { return &c.Simulate },
			"run N scripted devices inside the server, for demos and tests: sim-0 ... sim-N-1, firmware and software 1.0, over --simulate-cells cells; they use no socket (devices over real MQTT or CoAP: otafleet sim). Register them (device create --prefix sim- --count N) to target them in tasks, or see --simulate-campaign", notNegative),
		opt("simulate-protocol", func(c *serveConfig) *string { return &c.SimulateProtocol },
			"protocol of simulated devices: mqtt, fota, pcp or mixed", oneOf("mqtt", "fota", "pcp", "mixed")),
		opt("simulate-cells", func(c *serveConfig) *int { return &c.SimulateCells },
			"radio cells the simulated devices are spread over", atLeast(1)),
		opt("simulate-campaign", func(c *serveConfig) *bool { return &c.SimulateCampaign },
			"on first start, create a task upgrading every simulated device"),
		opt("simulate-delay", func(c *serveConfig) *time.Duration { return &c.SimulateDelay },
			"how long a simulated device takes per protocol step", notNegative),
	}
}

// Checks of a setting's value: each says what is wanted, after the flag's
// name.
type number interface {
	int | int64 | float64 | time.Duration
}

// leaseRange checks --cluster-lease.
func leaseRange(d time.Duration) error {
	if d < time.Second || d > actors.MaxLease {
		return fmt.Errorf("must be from 1s to %v, not %v", actors.MaxLease, d)
	}
	return nil
}

func positive[T number](v T) error {
	if v <= 0 {
		return fmt.Errorf("must be positive, not %v", v)
	}
	return nil
}

func notNegative[T number](v T) error {
	if v < 0 {
		return fmt.Errorf("must not be negative, not %v", v)
	}
	return nil
}

func atLeast[T number](least T) func(T) error {
	return func(v T) error {
		if v < least {
			return fmt.Errorf("must be at least %v, not %v", least, v)
		}
		return nil
	}
}

func oneOf(values ...string) func(string) error {
	return func(v string) error {
		if !slices.Contains(values, v) {
			return fmt.Errorf("must be %s or %s, not %q", strings.Join(values[:len(values)-1], ", "), values[len(values)-1], v)
		}
		return nil
	}
}

func nonEmpty(v string) error {
	if v == "" {
		return errors.New("must not be empty")
	}
	return nil
}

func httpURL(v string) error {
	if v != "" && !strings.HasPrefix(v, "http://") && !strings.HasPrefix(v, "https://") {
		return fmt.Errorf("%q: want http://host:port or https://host:port", v)
	}
	return nil
}

// flags registers the table's flags, bound to c's fields, with c's values
// as their defaults.
func (c *serveConfig) flags(fs *pflag.FlagSet) {
	for _, s := range settings() {
		switch p := s.field(c).(type) {
		case *string:
			fs.StringVar(p, s.name, *p, s.usage)
		case *bool:
			fs.BoolVar(p, s.name, *p, s.usage)
		case *int:
			fs.IntVar(p, s.name, *p, s.usage)
		case *int64:
			fs.Int64Var(p, s.name, *p, s.usage)
		case *uint32:
			fs.Uint32Var(p, s.name, *p, s.usage)
		case *rangeBounds:
			fs.Var(p, s.name, s.usage)
		case *float64:
			fs.Float64Var(p, s.name, *p, s.usage)
		case *time.Duration:
			fs.DurationVar(p, s.name, *p, s.usage)
		default:
			panic(fmt.Sprintf("setting %s: a field of type %T", s.name, p))
		}
	}
}

// loadFile reads a YAML or TOML config file into c: each key is a row of
// the settings table. A key whose flag was given on the command line
// (given reports that) is decoded, so a bad value is still an error, but
// the flag's value is kept.
func (c *serveConfig) loadFile(path string, given func(name string) bool) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	rows := map[string]setting{}
	for _, s := range settings() {
		rows[s.name] = s
	}
	var ignored serveConfig
	// The flags' value types say what a key wants (see wants).
	types := pflag.NewFlagSet("types", pflag.ContinueOnError)
	ignored.flags(types)
	ignored = serveConfig{}
	decode := func(keys []string, into func(key string, field any) error) error {
		slices.Sort(keys)
		for _, k := range keys {
			s, ok := rows[k]
			if !ok {
				return fmt.Errorf("%s: unknown key %q", path, k)
			}
			dst := c
			if given(k) {
				dst = &ignored
			}
			if err := into(k, s.field(dst)); err != nil {
				if want, ok := wants[types.Lookup(k).Value.Type()]; ok {
					return fmt.Errorf("%s: %s: want %s", path, k, want) // not the decoder's Go types
				}
				return fmt.Errorf("%s: %s %w", path, k, err)
			}
		}
		return nil
	}
	switch ext := strings.ToLower(filepath.Ext(path)); ext {
	case ".yaml", ".yml":
		var doc map[string]yaml.Node
		if err := yaml.Unmarshal(b, &doc); err != nil {
			if te := new(yaml.TypeError); errors.As(err, &te) {
				return fmt.Errorf("%s: want settings as key: value lines, one per setting", path) // not the decoder's Go types
			}
			return fmt.Errorf("%s: %w", path, err)
		}
		return decode(slices.Collect(maps.Keys(doc)), func(k string, field any) error {
			n := doc[k]
			return n.Decode(field)
		})
	case ".toml":
		var doc map[string]toml.Primitive
		md, err := toml.Decode(string(b), &doc)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		return decode(slices.Collect(maps.Keys(doc)), func(k string, field any) error {
			if _, ok := field.(*time.Duration); ok && md.Type(k) != "String" {
				return errors.New("a duration is a string") // TOML would take a number as nanoseconds
			}
			return md.PrimitiveDecode(doc[k], field)
		})
	default:
		return fmt.Errorf("%s: config files are .yaml, .yml or .toml, not %q", path, ext)
	}
}

func (c serveConfig) validate() error {
	for _, s := range settings() {
		if err := s.check(c); err != nil {
			return err
		}
	}
	if c.MQTTBroker != "" && (c.MQTTClientID == "" || c.MQTTProbeInterval <= 0) {
		return errors.New("--mqtt-broker needs a --mqtt-client-id and a positive --mqtt-probe-interval")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	if c.PreviousSealKeyFile != "" && c.SealKeyFile == "" {
		return errors.New("--previous-seal-key-file needs --seal-key-file (the new key)")
	}
	if err := c.checkStore(); err != nil {
		return err
	}
	if err := c.checkCluster(); err != nil {
		return err
	}
	if err := c.minRate().Validate(); err != nil {
		return fmt.Errorf("--min-transfer-rate must not be negative, and --min-transfer-window must be positive: %w", err)
	}
	_, err := c.engineConfig()
	return err
}

// minRate is the minimum transfer rate of the HTTP servers.
func (c serveConfig) minRate() minrate.Config {
	return minrate.Config{Rate: c.MinTransferRate, Window: c.MinTransferWindow}
}

// engineConfig is the engine's configuration: the table's engine settings
// and the MQTT online wait derived from --timeout-online (see settings).
func (c serveConfig) engineConfig() (actors.Config, error) {
	cfg := c.Engine
	cfg.Device.OnlineMQTT = devicefsm.OnlineMQTTFor(cfg.Device.Online)
	if err := cfg.Validate(); err != nil {
		return cfg, engineErr(err)
	}
	return cfg, nil
}

// engineErr words an error of the engine's validation (actors.Config.Validate)
// in the settings' terms: without the machine's package prefix, and with
// each field of the engine's configuration that a row sets named by its
// flag (CostGood → --cell-cost-good). The error still wraps err.
func engineErr(err error) error {
	msg := err.Error()
	for _, sentinel := range []error{devicefsm.ErrInvalidConfig, cellfsm.ErrInvalidConfig, taskfsm.ErrInvalidConfig} {
		if errors.Is(err, sentinel) {
			msg = strings.TrimPrefix(msg, sentinel.Error()+": ")
		}
	}
	var e actors.Config
	flags := map[uintptr]string{}
	for _, s := range settings() {
		if s.engine == nil {
			continue
		}
		if b, ok := s.engine(&e).(*rangeBounds); ok {
			for _, p := range b {
				flags[reflect.ValueOf(p).Pointer()] = "--" + s.name
			}
			continue
		}
		flags[reflect.ValueOf(s.engine(&e)).Pointer()] = "--" + s.name
	}
	byName := map[string]string{}
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		for i := range v.NumField() {
			f := v.Field(i)
			if f.Kind() == reflect.Struct { // its address is its first field's
				walk(f)
			} else if flag, ok := flags[f.Addr().Pointer()]; ok {
				byName[v.Type().Field(i).Name] = flag
			}
		}
	}
	walk(reflect.ValueOf(&e).Elem())
	msg = goName.ReplaceAllStringFunc(msg, func(w string) string { return cmp.Or(byName[w], w) })
	return &reworded{msg: msg, err: err}
}

// goName matches a word that may be a Go field name.
var goName = regexp.MustCompile(`\b[A-Z][A-Za-z0-9]*\b`)

// reworded is err said differently to the user.
type reworded struct {
	msg string
	err error
}

func (r *reworded) Error() string { return r.msg }
func (r *reworded) Unwrap() error { return r.err }

// probeFor is how long the adapter to --mqtt-broker probes a device a job
// waits for: an hour beyond the job's MQTT online wait (see settings).
func (c serveConfig) probeFor() time.Duration {
	return devicefsm.OnlineMQTTFor(c.Engine.Device.Online) + time.Hour
}

// rangeBounds are the four bounds of one radio metric's ranges in a
// cellfsm.Config, lowest first (poor, medium and good lower bounds, then the
// ceiling). As a flag or a config-file key they are one comma list
// ("-125,-115,-105,-44"); a config file may also give a list of numbers.
// Their order is cellfsm.Config.Validate's to check.
type rangeBounds [4]*int32

func (b *rangeBounds) String() string {
	if b[0] == nil {
		return ""
	}
	return fmt.Sprintf("%d,%d,%d,%d", *b[0], *b[1], *b[2], *b[3])
}

func (b *rangeBounds) Type() string { return "POOR,MEDIUM,GOOD,MAX" }

func (b *rangeBounds) Set(v string) error {
	parts := strings.Split(v, ",")
	if len(parts) != len(b) {
		return fmt.Errorf("wants four whole numbers POOR,MEDIUM,GOOD,MAX, not %q", v)
	}
	var vs [4]int32
	for i, p := range parts {
		n, err := strconv.ParseInt(strings.TrimSpace(p), 10, 32)
		if err != nil {
			return fmt.Errorf("wants four whole numbers POOR,MEDIUM,GOOD,MAX, not %q", v)
		}
		vs[i] = int32(n)
	}
	for i, p := range b {
		*p = vs[i]
	}
	return nil
}

// UnmarshalYAML takes a comma list or a sequence of four numbers.
func (b *rangeBounds) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.SequenceNode {
		var parts []string
		for _, c := range n.Content {
			parts = append(parts, c.Value)
		}
		return b.Set(strings.Join(parts, ","))
	}
	return b.Set(n.Value)
}

// UnmarshalTOML takes a comma list or an array of four numbers.
func (b *rangeBounds) UnmarshalTOML(v any) error {
	if list, ok := v.([]any); ok {
		parts := make([]string, len(list))
		for i, x := range list {
			parts[i] = fmt.Sprint(x)
		}
		return b.Set(strings.Join(parts, ","))
	}
	return b.Set(fmt.Sprint(v))
}
