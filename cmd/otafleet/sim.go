package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/otafleet/otafleet/bench"
)

// simOpts are the flags of `otafleet sim`.
type simOpts struct {
	dataDir     string
	api, token  string
	mqtt        string
	coap, coaps string
	dtls        bool
	protocol    string
	devices     int
	first       int
	product     string
	prefix      string
	fw, sw      string
	cells       int
	coverage    string
	failRate    float64
	register    bool
	thinkTime   time.Duration
	lifetime    time.Duration
	bandwidth   int64
	dropRate    float64
	seed        string
	caFile      string
	report      string
	logLevel    string
	concurrency int
	cpuProfile  string
	localAddrs  []string
}

// simIDPrefix is sim's default device ID prefix: not the "sim-" of serve's
// --simulate devices (and of the README's tour), so that a sim fleet does not
// reuse their IDs in another product.
const simIDPrefix = "dev-"

func simCommand(stdout, stderr io.Writer) *cobra.Command {
	o := &simOpts{}
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Run simulated MQTT and LwM2M devices against a running server, over real sockets",
		Long: `sim runs N simulated devices against the server whose addresses are in
DATA-DIR/addrs.json (or --api, --mqtt, --coap, --coaps). Device IDs are the
prefix followed by FIRST … FIRST+N-1 (` + simIDPrefix + `0 … ` + simIDPrefix + `199 with the default
prefix); LwM2M devices are spread over K cells with the given coverage; MQTT
devices report no radio.
Every device's secret (MQTT) and PSK (DTLS) derive from --secret-seed and
its ID, so a later sim without --register finds the same devices.

With --register it first creates the devices through the API (devices that
exist already in their product are kept; a device that exists in another
product is an error). The devices answer the real protocols, download and
verify the package, and on success report the new version; --fail-rate makes
that share of them fail (with MQTT result codes 4, 10 or 5, Update Results 8,
5 or 2, or PCP codes 0x04 at 0x14, 0x05 at 0x16, 0x0A at 0x18).

Once every device is connected it prints "ready devices=N" on stdout. It
runs until interrupted (SIGINT or SIGTERM), then stops the devices (LwM2M
devices de-register) and writes --report.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runSim(cmd.Context(), o, stdout, stderr) },
	}
	fs := cmd.Flags()
	fs.StringVar(&o.dataDir, "data-dir", "", "the server's data folder, for addrs.json, api-token and download-cert.pem; default: $"+envDataDir+", else otafleet-data")
	fs.StringVar(&o.api, "api", "", "API address (default: addrs.json's api); needed by --register and by FOTA devices")
	fs.StringVar(&o.token, "token", "", "API bearer token; default: $"+envToken+", else DATA-DIR/api-token")
	fs.StringVar(&o.mqtt, "mqtt", "", "MQTT broker, host:port or tcp://, ssl:// URL (default: addrs.json's mqtt); a comma-separated list (a cluster's nodes): each device starts with the one its ID hashes to and fails over to the next ones when its broker goes away")
	fs.StringVar(&o.coap, "coap", "", "LwM2M server, host:port (default: addrs.json's coap); a comma-separated list fails over as --mqtt's")
	fs.StringVar(&o.coaps, "coaps", "", "LwM2M DTLS server, host:port (default: addrs.json's coaps); used with --dtls; a comma-separated list fails over as --mqtt's")
	fs.BoolVar(&o.dtls, "dtls", false, "LwM2M devices talk DTLS 1.2 with a PSK (registered with it by --register)")
	fs.StringVar(&o.protocol, "protocol", "lwm2m", "mqtt, lwm2m (FOTA), pcp (software over PCP) or mixed (the three in turn)")
	fs.IntVar(&o.devices, "devices", 10, "how many devices")
	fs.IntVar(&o.first, "first", 0, "number of the first device (several sims can share a fleet)")
	fs.StringVar(&o.product, "product", "", "the devices' product ID; with --protocol mixed three, comma separated: the MQTT, LwM2M and PCP products")
	fs.StringVar(&o.prefix, "id-prefix", simIDPrefix, "device ID prefix")
	fs.StringVar(&o.fw, "fw-version", "1.0", "the devices' firmware version")
	fs.StringVar(&o.sw, "sw-version", "1.0", "the devices' software version")
	fs.IntVar(&o.cells, "cells", 10, "radio cells the LwM2M devices are spread over")
	fs.StringVar(&o.coverage, "coverage", "good", "radio coverage: good, medium, poor or mixed (75% good, 20% medium, 5% poor)")
	fs.Float64Var(&o.failRate, "fail-rate", 0, "share of devices, 0 to 1, that fail their upgrade")
	fs.BoolVar(&o.register, "register", false, "create the devices through the API first")
	fs.DurationVar(&o.lifetime, "lwm2m-lifetime", 0, "LwM2M devices' registration lifetime; they update it every half (0: 300s). A short one makes them notice sooner that their server went away")
	fs.DurationVar(&o.thinkTime, "think-time", 0, "each device's pause before acting on an upgrade command and before installing (0.5 to 1.5 times this, by device)")
	fs.Int64Var(&o.bandwidth, "bandwidth", 0, "each device's download bandwidth in bytes per second (0: unlimited)")
	fs.Float64Var(&o.dropRate, "drop-rate", 0, "share, 0 to 1, of the datagrams each LwM2M device receives that it loses at random (loss tests)")
	fs.StringVar(&o.seed, "secret-seed", "otafleet-sim", "seed of the devices' secrets and PSKs")
	fs.StringVar(&o.caFile, "ca-file", "", "PEM certificates the devices trust for downloads (default: DATA-DIR/download-cert.pem when it exists, and the system's)")
	fs.StringVar(&o.report, "report", "", "file the simulator writes its JSON report to when it stops")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.IntVar(&o.concurrency, "concurrency", 64, "devices connecting at once")
	fs.StringVar(&o.cpuProfile, "cpu-profile", "", "write the simulator's CPU profile to this file, from start to stop")
	fs.StringSliceVar(&o.localAddrs, "local-addr", nil, "local IPs the devices' sockets bind to, 16,000 devices each in turn (default: against a loopback server, 127.0.0.1, then 127.0.0.2, ... beyond 16,000 devices; otherwise the system's choice)")
	return cmd
}

func (o *simOpts) resolvedDataDir() string {
	switch {
	case o.dataDir != "":
		return o.dataDir
	case os.Getenv(envDataDir) != "":
		return os.Getenv(envDataDir)
	}
	return defaultServeConfig().DataDir
}

func usage(format string, a ...any) error {
	return usageError(fmt.Errorf(format, a...))
}

func runSim(ctx context.Context, o *simOpts, stdout, stderr io.Writer) error {
	protos, err := bench.Protocols(o.protocol)
	if err != nil {
		return usage("--protocol: %v", err)
	}
	fleet := bench.Fleet{Protocols: protos, Devices: o.devices, First: o.first, Prefix: o.prefix, Cells: o.cells,
		Coverage: o.coverage, FailRate: o.failRate, SecretSeed: o.seed}
	if err := fleet.Validate(); err != nil {
		return usage("%v", err)
	}
	if o.lifetime != 0 && o.lifetime < 2*time.Second {
		return usage("--lwm2m-lifetime %v: want at least 2s (or 0 for the default)", o.lifetime)
	}
	if o.bandwidth < 0 || o.thinkTime < 0 {
		return usage("--bandwidth and --think-time cannot be negative")
	}
	if !(o.dropRate >= 0 && o.dropRate <= 1) {
		return usage("--drop-rate %v: want 0 to 1", o.dropRate)
	}
	if os.Getenv("GOGC") == "" {
		// A simulator is a load generator: memory is cheaper than the
		// collector's CPU, which was a fifth of its time at GOGC 100.
		debug.SetGCPercent(400)
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return fmt.Errorf("--cpu-profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("--cpu-profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	dir := o.resolvedDataDir()
	addrs := map[string]string{}
	if b, err := os.ReadFile(filepath.Join(dir, "addrs.json")); err == nil {
		if err := json.Unmarshal(b, &addrs); err != nil {
			return fmt.Errorf("%s: %w", filepath.Join(dir, "addrs.json"), err)
		}
	}
	pick := func(flag, key string) string {
		if flag != "" {
			return flag
		}
		return addrs[key]
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return usage("--log-level %q: %v", o.logLevel, err)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	cfg := bench.SimConfig{Fleet: fleet, FwVersion: o.fw, SwVersion: o.sw, CoAP: pick(o.coap, "coap"), CoAPS: pick(o.coaps, "coaps"),
		DTLS: o.dtls, Lifetime: o.lifetime, ThinkTime: o.thinkTime, BytesPerSecond: o.bandwidth, DropRate: o.dropRate, Concurrency: o.concurrency, Logger: logger}
	if m := pick(o.mqtt, "mqtt"); m != "" {
		brokers := bench.ServerList(m, 0)
		for i, b := range brokers {
			if !strings.Contains(b, "://") {
				brokers[i] = "tcp://" + b
			}
		}
		cfg.MQTT = strings.Join(brokers, ",")
	}
	if cfg.HTTPClient, err = downloadClient(o.caFile, dir); err != nil {
		return err
	}
	needAPI := o.register
	for _, p := range protos {
		needAPI = needAPI || p == bench.ProtoLwM2M
	}
	if needAPI {
		copts := clientOpts{api: pick(o.api, "api"), token: o.token, dataDir: dir}
		if copts.api == "" {
			return usage("no API address: pass --api or --data-dir of a running server (--register and FOTA devices need it)")
		}
		base, err := copts.baseURL()
		if err != nil {
			return err
		}
		token, err := copts.resolvedToken()
		if err != nil {
			return err
		}
		cfg.API = bench.NewAPI(base, token)
	}
	// Sockets: one per device (plus its downloads); against a loopback
	// server, bound to 127.0.0.1 (and 127.0.0.2 and on beyond 16,000
	// devices, one address's share of ports). Always bound, not the wildcard
	// choice: an unbound UDP socket's port must be free on every address,
	// so another process holding most of the ephemeral range on other
	// loopback addresses (a second, large sim) leaves it none ("connect:
	// resource temporarily unavailable"), while 127.0.0.1's ports are free.
	limit := raiseFileLimit()
	if need := uint64(o.devices)*5/4 + 256; limit > 0 && need > limit {
		return fmt.Errorf("%d devices need about %d open files, the limit is %d: raise it (ulimit -n) or split the fleet over several sims with --first", o.devices, need, limit)
	}
	cfg.LocalAddrs = o.localAddrs
	if len(cfg.LocalAddrs) == 0 {
		cfg.LocalAddrs = defaultLocalAddrs(cfg.MQTT, cfg.CoAP, protos[0], o.devices)
	}

	if o.register {
		products := map[string]string{}
		ids := strings.Split(o.product, ",")
		if o.product == "" || len(ids) != len(protos) {
			return usage("--product: want %d product ID(s) for --protocol %s (mqtt, lwm2m, pcp in that order for mixed)", len(protos), o.protocol)
		}
		for i, p := range protos {
			products[p] = strings.TrimSpace(ids[i])
		}
		n, err := bench.Register(ctx, cfg.API, fleet, products, o.dtls)
		if err != nil {
			return err
		}
		logger.Info("devices registered", "created", n, "devices", o.devices)
	}
	start := time.Now()
	sim, err := bench.StartSim(ctx, cfg)
	if err != nil {
		return err
	}
	mix := map[string]int{}
	for n := o.first; n < o.first+o.devices; n++ {
		mix[fleet.Device(n).Protocol]++
	}
	fmt.Fprintf(stdout, "ready devices=%d mqtt=%d lwm2m=%d pcp=%d seconds=%.1f\n", o.devices, mix[bench.ProtoMQTT], mix[bench.ProtoLwM2M], mix[bench.ProtoPCP], time.Since(start).Seconds())
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	var last bench.SimStatus
	for running := true; running; {
		select {
		case <-ctx.Done():
			running = false
		case <-tick.C:
			if st := sim.Status(); st != last {
				last = st
				logger.Info("devices", "running", st.Devices, "commands", st.Commands, "installed", st.Installed, "failed", st.Failed)
			}
		}
	}
	rep := sim.Stop()
	fmt.Fprintf(stdout, "stopped devices=%d upgrades=%d failed=%d upgraded_twice=%d\n", rep.Devices, rep.Upgrades, rep.Failed, rep.UpgradedTwice)
	if o.report != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.report, append(b, '\n'), 0o600); err != nil {
			return fmt.Errorf("--report: %w", err)
		}
	}
	return nil
}

// downloadClient trusts caFile, else DIR/download-cert.pem when it exists
// (the server's self-signed certificate), on top of the system's roots.
func downloadClient(caFile, dir string) (*http.Client, error) {
	path := caFile
	if path == "" {
		path = filepath.Join(dir, "download-cert.pem")
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return &http.Client{Timeout: 10 * time.Minute}, nil
		}
	}
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--ca-file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// The key exchanges an embedded TLS stack offers (mbedTLS, wolfSSL):
	// not Go's default hybrid X25519MLKEM768, which meters do not have and
	// which would make a bench run measure a costlier handshake than a
	// fleet's.
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}}
	tr.MaxIdleConnsPerHost = 4
	return &http.Client{Transport: tr, Timeout: 10 * time.Minute}, nil
}

// defaultLocalAddrs is what a sim's devices bind to without --local-addr:
// against a loopback server (the first of the first protocol's list), one
// loopback address per bench.DevicesPerLocalAddr devices from 127.0.0.1;
// otherwise nil (the system's choice).
func defaultLocalAddrs(mqtt, coap, firstProto string, devices int) []string {
	server := bench.ServerList(coap, 0)[0]
	if firstProto == bench.ProtoMQTT {
		server = strings.TrimPrefix(bench.ServerList(mqtt, 0)[0], "tcp://")
	}
	return bench.LoopbackAddrs(server, (devices+bench.DevicesPerLocalAddr-1)/bench.DevicesPerLocalAddr)
}
