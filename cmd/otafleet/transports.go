package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/netutil"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/download"
	"github.com/otafleet/otafleet/transport/lwm2m"
	"github.com/otafleet/otafleet/transport/mqtt"
)

// deviceTransports are the real device-facing servers: the embedded MQTT
// broker and the package download server.
type deviceTransports struct {
	lwm2m  *lwm2m.Server  // the LwM2M server, when --coap-addr is set
	broker *mqtt.Broker   // the embedded broker, or
	ext    *mqtt.External // the adapter to --mqtt-broker
	dl     *download.Server
	dlHTTP *http.Server
	dlLis  net.Listener
	addrs  map[string]string
	log    *slog.Logger
	// The sweep of the download handles (download.Server.SweepHandles),
	// from start to Close.
	stopSweep context.CancelFunc
	swept     chan struct{}
}

// start serves the listeners: after the engine's recovery, so that devices
// connecting meet their recovered actors.
func (t *deviceTransports) start() error {
	// The handles of attempts that ended while serve was down were never
	// revoked: sweep them, in the background, now that the engine answers.
	ctx, cancel := context.WithCancel(context.Background())
	t.stopSweep, t.swept = cancel, make(chan struct{})
	go func() {
		defer close(t.swept)
		visited, deleted, err := t.dl.SweepHandles(ctx)
		if err != nil && ctx.Err() == nil {
			t.log.Warn("download: sweeping the handles", "error", err)
		}
		t.log.Debug("download: handles swept", "visited", visited, "deleted", deleted)
	}()
	if t.lwm2m != nil {
		t.lwm2m.Start()
	}
	if t.dlHTTP != nil {
		go func() {
			if err := t.dlHTTP.Serve(t.dlLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				t.log.Error("download server stopped", "error", err)
			}
		}()
	}
	if t.broker != nil {
		if err := t.broker.Start(); err != nil {
			return fmt.Errorf("mqtt broker: %w", err)
		}
	}
	return nil
}

// newDeviceTransports opens the listeners of --mqtt-addr, --mqtts-addr and
// --download-addr (each "" is off); start serves them. In a cluster, node
// (the node's advertised address; "" alone) holds the LwM2M registrations
// kept in the store; the download handles are every node's. The engine receives
// what devices send. Close stops them.
func newDeviceTransports(cfg serveConfig, reg persistence.Store, sec secrets, node string, engine *actors.Engine, presence *transport.Presence, metrics prometheus.Registerer, clk clock.Clock, logger *slog.Logger) (*deviceTransports, error) {
	t := &deviceTransports{addrs: map[string]string{}, log: logger}
	cert, key := sec.cert, sec.downloadKey
	var err error
	// One set of package images for every download path. The engine's
	// RevokeToken effects reach the download server's Revoke (router), so
	// it keeps the grants it authorized.
	images := download.NewImages(reg, cfg.PackageCacheBytes)
	t.dl, err = download.New(download.Config{
		Packages: reg, Handles: reg, Key: key, TTL: cfg.TokenTTL, Clock: clk, Logger: logger.With("component", "download"),
		Authorize: engine.AuthorizeDownload, KeepGrants: true, OnServed: engine.DownloadServed, Images: images,
	})
	if err != nil {
		return nil, err
	}
	base := cfg.DownloadURL
	if cfg.DownloadAddr != "" {
		lis, err := net.Listen("tcp", cfg.DownloadAddr)
		if err != nil {
			return nil, fmt.Errorf("--download-addr: %w", err)
		}
		t.addrs["download"] = lis.Addr().String()
		lis = netutil.LimitListener(lis, cfg.DownloadMaxConns)
		scheme := "http"
		t.dlHTTP = newHTTPServer(cfg, clk, t.dl.Handler(), logger)
		if cfg.DownloadTLS {
			scheme = "https"
			t.dlHTTP.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12}
			lis = tls.NewListener(lis, t.dlHTTP.TLSConfig)
		}
		if base == "" {
			base = scheme + "://" + t.addrs["download"]
		}
		t.dlLis = lis
		t.log = logger
	}

	if cfg.CoAPAddr != "" || cfg.CoAPSAddr != "" {
		t.lwm2m, err = lwm2m.New(lwm2m.Config{
			Addr: cfg.CoAPAddr, DTLSAddr: cfg.CoAPSAddr, PublicAddr: cfg.CoAPPublic, DTLSPublicAddr: cfg.CoAPSPublic, Devices: reg, Packages: reg, Tokens: t.dl, Images: images, Sessions: reg,
			Node: node, Uplinks: engine, Presence: presence, Clock: clk, Logger: logger,
		})
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("--coap-addr/--coaps-addr: %w", err)
		}
		if a := t.lwm2m.Addr(); a != "" {
			t.addrs["coap"] = a
		}
		if a := t.lwm2m.DTLSAddr(); a != "" {
			t.addrs["coaps"] = a
		}
	}
	if cfg.MQTTBroker != "" {
		if base == "" {
			t.Close()
			return nil, errors.New("MQTT devices need a package download server: set --download-addr or --download-url")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		t.ext, err = mqtt.NewExternal(ctx, mqtt.ExternalConfig{
			Broker: cfg.MQTTBroker, ClientID: cfg.MQTTClientID, Uplinks: engine, Downloads: mintURL{s: t.dl, base: base},
			ProbeInterval: cfg.MQTTProbeInterval, ProbeFor: cfg.probeFor(), Clock: clk, Logger: logger,
		})
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("--mqtt-broker: %w", err)
		}
		t.addrs["mqtt-broker"] = cfg.MQTTBroker
		return t, nil
	}
	if cfg.MQTTAddr != "" || cfg.MQTTSAddr != "" {
		if base == "" {
			t.Close()
			return nil, errors.New("MQTT devices need a package download server: set --download-addr or --download-url")
		}
		bc := cfg.brokerConfig()
		bc.Credentials, bc.Uplinks, bc.Downloads, bc.Presence = reg, engine, mintURL{s: t.dl, base: base}, presence
		bc.Metrics, bc.Clock, bc.Logger = metrics, clk, logger
		if cfg.MQTTSAddr != "" {
			bc.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12}
		}
		t.broker, err = mqtt.NewBroker(bc)
		if err != nil {
			t.Close()
			return nil, err
		}
		for _, l := range []string{"mqtt", "mqtts"} {
			if a := t.broker.Addr(l); a != "" {
				t.addrs[l] = a
			}
		}
	}
	return t, nil
}

// brokerConfig is the embedded broker's listeners and limits from the
// flags; the caller adds its dependencies.
func (c serveConfig) brokerConfig() mqtt.BrokerConfig {
	return mqtt.BrokerConfig{
		Addr: c.MQTTAddr, TLSAddr: c.MQTTSAddr,
		RequireTimestamp: c.MQTTRequireTimestamp, ConnectTimeout: c.MQTTConnectTimeout,
		MaxConnections: noLimitIfZero(c.MQTTMaxConnections), MaxConnectionsPerSource: noLimitIfZero(c.MQTTMaxConnectionsPerSource),
		LoginFailuresPerDevice: noLimitIfZero(c.MQTTLoginFailuresPerDevice), LoginFailuresPerSource: noLimitIfZero(c.MQTTLoginFailuresPerSource),
		UplinkRate: noLimitIfZero(c.MQTTUplinkRate), UplinkBurst: c.MQTTUplinkBurst,
	}
}

// noLimitIfZero maps a limit flag's 0 ("no limit") to the broker's
// negative, since the broker's 0 means its default.
func noLimitIfZero[N int | float64](n N) N {
	if n == 0 {
		return -1
	}
	return n
}

// Close stops the broker and the download server.
func (t *deviceTransports) Close() {
	if t.stopSweep != nil {
		t.stopSweep()
		<-t.swept
	}
	if t.lwm2m != nil {
		_ = t.lwm2m.Close()
	}
	if t.broker != nil {
		_ = t.broker.Close()
	}
	if t.ext != nil {
		_ = t.ext.Close()
	}
	if t.dlHTTP != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = t.dlHTTP.Shutdown(ctx)
		_ = t.dlLis.Close() // when it was never served
	}
}

// mintURL gives the broker the download URL and token of a job.
type mintURL struct {
	s    *download.Server
	base string
}

func (m mintURL) Mint(taskID, deviceID string, attempt uint32, packageID string) (string, string, time.Time) {
	tok, exp := m.s.Mint(download.Grant{TaskID: taskID, DeviceID: deviceID, Attempt: attempt, PackageID: packageID})
	return m.base + download.Path(packageID), tok, exp
}

// router sends each downlink to the transport that reaches the device:
// in-process simulated devices first, then MQTT downlinks to the broker and
// the others (LwM2M, PCP) to the LwM2M server.
type router struct {
	sim   *memtransport.Transport // nil without --simulate
	mqtt  transport.Downlinks     // nil without a broker
	lwm2m transport.Downlinks     // nil without --coap-addr
	dl    *download.Server        // the download server (HTTP and CoAP), told of every revocation
}

func (r *router) pick(dl *messages.Downlink) (transport.Downlinks, error) {
	if r.sim != nil {
		if _, ok := r.sim.Device(dl.GetDeviceId()); ok {
			return r.sim, nil
		}
	}
	switch dl.GetKind().(type) {
	case *messages.Downlink_MqttVersionQuery, *messages.Downlink_MqttUpgrade:
		if r.mqtt != nil {
			return r.mqtt, nil
		}
		return nil, errors.New("no MQTT broker (--mqtt-addr is off)")
	}
	if r.lwm2m != nil {
		return r.lwm2m, nil
	}
	return nil, errors.New("no LwM2M server (--coap-addr is off)")
}

func (r *router) Send(ctx context.Context, dl *messages.Downlink) error {
	t, err := r.pick(dl)
	if err != nil {
		return err
	}
	return t.Send(ctx, dl)
}

func (r *router) RevokeToken(ctx context.Context, rt *messages.RevokeToken) error {
	var err error
	if r.dl != nil {
		err = r.dl.Revoke(ctx, rt.GetTaskId(), rt.GetDeviceId(), rt.GetAttempt())
	}
	if r.sim != nil {
		if _, ok := r.sim.Device(rt.GetDeviceId()); ok {
			return errors.Join(err, r.sim.RevokeToken(ctx, rt))
		}
	}
	if r.mqtt != nil {
		return errors.Join(err, r.mqtt.RevokeToken(ctx, rt))
	}
	return err
}
