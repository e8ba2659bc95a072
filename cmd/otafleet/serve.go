package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"connectrpc.com/grpchealth"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/net/netutil"

	"github.com/otafleet/otafleet/actors"
	webconsole "github.com/otafleet/otafleet/console"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/internal/gctune"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/rpc"
	"github.com/otafleet/otafleet/transport"
)

func serveCommand(stdout, stderr io.Writer) *cobra.Command {
	cfg := defaultServeConfig()
	var configFile string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the engine with embedded defaults (journal and registry in --data-dir)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile != "" {
				if err := cfg.loadFile(configFile, cmd.Flags().Changed); err != nil {
					return usageError(err)
				}
			}
			if cfg.SealKeyFile == "" {
				cfg.SealKeyFile = os.Getenv(envSealKeyFile)
			}
			if err := cfg.validate(); err != nil {
				return usageError(err)
			}
			return serve(cmd.Context(), cfg, stdout, stderr)
		},
	}
	cfg.flags(cmd.Flags())
	cmd.Flags().StringVar(&configFile, "config", "", "YAML or TOML file with any of these flags as keys")
	return cmd
}

// testJournalHook is nil in the otafleet binary. The process tests' binary
// (which runs main as a child `serve`) sets it to put a failpoint between the
// engine and its journal.
var testJournalHook func(persistence.EventStore, *slog.Logger) persistence.EventStore

// serve runs until ctx is cancelled (SIGTERM or SIGINT), then shuts down:
// the API stops accepting, the actors finish the message at hand, the store closes.
func serve(ctx context.Context, cfg serveConfig, stdout, stderr io.Writer) error {
	logger := newLogger(cfg, stderr)
	cluster, err := cfg.clusterConfig()
	if err != nil {
		return usageError(err)
	}
	raiseFileLimit() // one socket per MQTT device
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	lock, err := lockDataDir(cfg.DataDir) // before anything in the folder is read or written
	if err != nil {
		return err
	}
	defer func() { // last: after the store has closed
		if err := lock.release(); err != nil {
			logger.Warn("releasing the data folder", "error", err)
		}
	}()
	store, _, err := openStore(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer func() {
		if err := store.Close(); err != nil {
			logger.Error("closing the store", "error", err)
		}
	}()
	sec, err := loadSecrets(ctx, cfg, store, logger)
	if err != nil {
		return err
	}
	token := sec.token

	reg, metrics := metricsRegistry(cluster)
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics.MustRegister(journalAppendCounters(store)...)
	engCfg, err := cfg.engineConfig()
	if err != nil {
		return err
	}
	if cluster.Enabled() {
		engCfg.Cluster = &actors.ClusterConfig{Etcd: cluster.Etcd, Name: cluster.Name, BindAddr: cluster.NodeAddr, AdvertiseAddr: cluster.AdvertiseAddr, Lease: cfg.ClusterLease}
	}
	clk := clock.Real()
	downlinks := &transport.LateDownlinks{}
	var journal persistence.EventStore = store
	if testJournalHook != nil {
		journal = testJournalHook(journal, logger)
	}
	engine, err := actors.New(engCfg, actors.Deps{Store: journal, Clock: clk, Transport: downlinks, Logger: logger, Metrics: metrics})
	if err != nil {
		return err
	}
	defer engine.Stop()
	if stop := tuneGC(cfg.GCHeapFloor, engine); stop != nil {
		defer stop()
	}
	// The devices' transports exist before recovery, so that resumed actors
	// reach them; the listeners accept devices after it.
	route := &router{}
	// The devices with a session, counted by the transports for the
	// fleet summary (GetFleetSummary) and GetDevice's online.
	presence := transport.NewPresence()
	var sim *simulation
	if cfg.Simulate > 0 {
		if sim, err = startSimulation(cfg, engine, store, presence, clk, logger); err != nil {
			return err
		}
		defer sim.Close()
		route.sim = sim.tr
	}
	devs, err := newDeviceTransports(cfg, store, sec, cluster.Node(), engine, presence, metrics, clk, logger)
	if err != nil {
		return err
	}
	defer devs.Close()
	switch {
	case devs.broker != nil:
		route.mqtt = devs.broker
	case devs.ext != nil:
		route.mqtt = devs.ext
	}
	if devs.lwm2m != nil {
		route.lwm2m = devs.lwm2m
	}
	route.dl = devs.dl
	downlinks.Set(route)
	if err := engine.Start(ctx); err != nil {
		return fmt.Errorf("recovery: %w", err)
	}
	if err := devs.start(); err != nil {
		return err
	}
	if cluster.Enabled() {
		if ns, ok := store.(persistence.NodeSessions); ok {
			stopSweep := startSessionSweeper(ctx, engine, ns, clk, logger)
			defer stopSweep()
		}
	}
	if sim != nil {
		if err := sim.run(ctx, cfg, engine, store, clk, logger); err != nil {
			return err
		}
	}

	lis, err := net.Listen("tcp", cfg.APIAddr)
	if err != nil {
		return fmt.Errorf("--api-addr: %w", err)
	}
	lis = netutil.LimitListener(lis, cfg.APIMaxConns)
	addrs := map[string]string{"api": lis.Addr().String()}
	for k, v := range devs.addrs {
		addrs[k] = v
	}
	if err := writeAddrs(cfg.DataDir, addrs); err != nil {
		lis.Close()
		return err
	}
	fmt.Fprintf(stdout, "otafleet serving: api=%s mqtt=%s mqtts=%s coap=%s coaps=%s download=%s data-dir=%s\n",
		addrs["api"], orDash(addrs["mqtt"]), orDash(addrs["mqtts"]), orDash(addrs["coap"]), orDash(addrs["coaps"]), orDash(addrs["download"]), cfg.DataDir)

	console, err := rpc.NewConsoleAuth(token, rpc.ConsoleConfig{}, clk, logger)
	if err != nil {
		lis.Close()
		return err
	}
	api, err := rpc.NewHandler(rpc.Deps{Registry: store, Store: store, Sessions: store, Engine: engine, Token: token, Console: console, Done: ctx.Done(), Logger: logger, Clock: clk, Presence: presence})
	if err != nil {
		lis.Close()
		return err
	}
	mux := http.NewServeMux()
	console.Mount(mux)   // /ui/login, /ui/logout, /ui/session
	mux.Handle("/", api) // behind the bearer token, checked before a body is read
	mux.Handle(grpchealth.NewHandler(newStoreHealth(store, engine)))
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/debug/pprof/", rpc.RequireToken(token, pprofHandler()))
	mux.Handle("/ui/", webconsole.Handler("/ui/")) // the web console's page, public; its calls need a session
	mux.Handle("/ui", webconsole.Handler("/ui/"))
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := newHTTPServer(cfg, clk, mux, logger)
	srv.Protocols = &protocols
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	// A one-time console login URL, as Jupyter prints one: it sets the
	// session cookie and redirects to /ui/, so the code leaves the address
	// bar; it works once, within 15 minutes.
	loginURL := "http://" + addrs["api"] + rpc.LoginPath + "?once=" + console.NewOnce()
	fmt.Fprintf(stdout, "otafleet console: %s\n", loginURL)
	logger.Info("console login (one use, 15 min)", "url", loginURL)
	logger.Info("serving", "api", addrs["api"], "mqtt", addrs["mqtt"], "mqtts", addrs["mqtts"], "coap", addrs["coap"], "coaps", addrs["coaps"], "download", addrs["download"],
		"data_dir", cfg.DataDir, "simulated_devices", cfg.Simulate)

	var exit error
	select {
	case err := <-errc:
		return fmt.Errorf("api server: %w", err)
	case <-ctx.Done():
	case <-engine.Lost(): // nil (never) when the node runs alone
		// Out of the membership: its actors have stopped and it takes no
		// more work; exit non-zero so that a supervisor restarts it and it
		// joins again under a new registration.
		logger.Error("this node is no longer a member of its cluster: it has stopped its actors and exits; restart it to join again", "node", cluster.Node(), "cluster", cluster.Name)
		exit = errNodeLost
	}
	logger.Info("shutting down")
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Warn("api shutdown", "error", err)
	}
	return exit
}

// newLogger is serve's logger: --log-format text (durations as 1m30s) or
// json (durations in seconds), at --log-level.
func newLogger(cfg serveConfig, w io.Writer) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		// A duration is a number of seconds, as in the bench report
		// (slog's own JSON handler writes nanoseconds).
		opts.ReplaceAttr = func(_ []string, a slog.Attr) slog.Attr {
			if a.Value.Kind() == slog.KindDuration {
				a.Value = slog.Float64Value(a.Value.Duration().Seconds())
			}
			return a
		}
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// apiToken reads DIR/api-token, creating it (mode 0600) on first start.
func apiToken(dir string) (string, error) {
	path := filepath.Join(dir, "api-token")
	tok, err := readTokenFile(path)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return tok, err
	}
	tok = newToken()
	if err := writeFileAtomic(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", err
	}
	return tok, nil
}

// writeAddrs writes DIR/addrs.json with the addresses actually listened on.
func writeAddrs(dir string, addrs map[string]string) error {
	b, err := json.Marshal(addrs)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, "addrs.json"), append(b, '\n'), 0o644)
}

// writeFileAtomic writes via a temporary file and a rename, so readers never
// see half a file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// journalAppendCounters exports the store's count of journal appends:
// otafleet_journal_appends_total by synced ("true": committed with an fsync
// before it returned; "false": persistence.Append.NoSync, durable with the
// next synced one) and otafleet_journal_synced_appends_total, the synced ones
// alone (what bench divides by the upgrades).
func journalAppendCounters(c persistence.AppendCounter) []prometheus.Collector {
	synced := func() float64 { n, _ := c.Appends(); return float64(n) }
	unsynced := func() float64 { _, n := c.Appends(); return float64(n) }
	const help = "Journal appends (one batch of one actor's events each) since the server started, by whether the append was synced before it returned."
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "otafleet_journal_synced_appends_total",
			Help: "Journal appends synced (fsynced, alone or in a group commit) before they returned, since the server started."}, synced),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "otafleet_journal_appends_total", Help: help,
			ConstLabels: prometheus.Labels{"synced": "true"}}, synced),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "otafleet_journal_appends_total", Help: help,
			ConstLabels: prometheus.Labels{"synced": "false"}}, unsynced),
	}
}

// tuneGC starts the collector's heap floor of --gc-heap-floor, which holds
// while the engine has active jobs; nil when it is off (0, or GOGC set in
// the environment: the operator's choice wins).
func tuneGC(floor int64, engine *actors.Engine) (stop func()) {
	if floor <= 0 || os.Getenv("GOGC") != "" {
		return nil
	}
	return gctune.Start(100, gctune.While(uint64(floor), func() bool { return engine.ActiveJobs() > 0 })).Stop
}
