package bench

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/otafleet/otafleet/bench/sim/lwm2msim"
	"github.com/otafleet/otafleet/bench/sim/mqttsim"
	"github.com/otafleet/otafleet/internal/clock"
)

// SimConfig describes a simulator: the fleet and where its server is.
type SimConfig struct {
	Fleet     Fleet
	FwVersion string // every device's firmware version at start
	SwVersion string // and software version
	// MQTT, CoAP and CoAPS may each list several servers, comma-separated
	// (the nodes of a cluster): a device starts with the server of the list
	// its ID hashes to (so that every protocol of a mixed fleet reaches
	// every server) and fails over to the next ones, in order, when its
	// server goes away (see mqttsim.Config.Fallbacks,
	// lwm2msim.Config.Fallbacks).
	MQTT  string // the broker: tcp://host:port (or ssl://)
	CoAP  string // the LwM2M server, host:port
	CoAPS string // its DTLS address, used with DTLS
	DTLS  bool
	// HTTPClient downloads MQTT devices' packages (it must trust the
	// server's certificate).
	HTTPClient *http.Client
	// API tells FOTA devices the version of the package they install (the
	// Package URI names only the package).
	API *API
	// ThinkTime and BytesPerSecond apply to every device: the pause before
	// acting on an upgrade command (each device thinks 0.5 to 1.5 times
	// ThinkTime, see Device.Think) and the download bandwidth cap.
	ThinkTime time.Duration
	// Lifetime is the LwM2M devices' registration lifetime (0: lwm2msim's
	// default); they update it every half.
	Lifetime       time.Duration
	BytesPerSecond int64
	// DropRate is the share, 0 to 1, of the datagrams each LwM2M device
	// receives that it loses (lwm2msim.Behaviour.DropRate).
	DropRate float64
	// LocalAddrs, when set, are the local IPs devices' sockets bind to, in
	// turn by blocks of PerLocalAddr devices (one IP has ~28k ephemeral
	// ports).
	LocalAddrs   []string
	PerLocalAddr int
	// Concurrency bounds the devices connecting at once (default 64).
	Concurrency int
	Logger      *slog.Logger
}

// simDevice is a running mqttsim or lwm2msim device.
type simDevice struct {
	spec Device
	mqtt *mqttsim.Device
	lw   *lwm2msim.Device
}

func (d *simDevice) stop() {
	switch {
	case d.mqtt != nil:
		d.mqtt.Stop()
	case d.lw != nil:
		d.lw.Stop()
	}
}

func (d *simDevice) upgrades() int {
	switch {
	case d.mqtt != nil:
		return d.mqtt.Stats().Upgrades
	case d.lw != nil:
		return d.lw.Stats().Upgrades
	}
	return 0
}

// Sim is a running simulator.
type Sim struct {
	cfg     SimConfig
	log     *slog.Logger
	devices []*simDevice

	commands, installed, failed, reported atomic.Int64
}

// SimStatus counts what the devices did so far.
type SimStatus struct {
	Devices   int   `json:"devices"`
	Commands  int64 `json:"commands"`  // upgrade commands received
	Installed int64 `json:"installed"` // new versions installed
	Failed    int64 `json:"failed"`    // failures the devices reported
}

// SimReport is what a simulator writes when it stops.
type SimReport struct {
	SimStatus
	// Upgrades counts the versions installed; UpgradedTwice the devices that
	// installed more than one (a firmware and a software upgrade in one run
	// count twice: the bench runs one upgrade per device).
	Upgrades      int      `json:"upgrades"`
	UpgradedTwice int      `json:"upgraded_twice"`
	TwiceIDs      []string `json:"upgraded_twice_ids,omitempty"`
}

const startAttempts = 3

// StartSim starts every device of cfg.Fleet and returns once all are
// connected (MQTT) or registered (LwM2M). A device that cannot start after
// three attempts fails the whole start, which stops the devices started.
func StartSim(ctx context.Context, cfg SimConfig) (*Sim, error) {
	if err := cfg.Fleet.Validate(); err != nil {
		return nil, err
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 64
	}
	if cfg.PerLocalAddr <= 0 {
		cfg.PerLocalAddr = DevicesPerLocalAddr
	}
	s := &Sim{cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	for _, p := range uniq(cfg.Fleet.Protocols) {
		switch {
		case p == ProtoMQTT && cfg.MQTT == "":
			return nil, errors.New("MQTT devices need the broker's address (--mqtt or addrs.json)")
		case p != ProtoMQTT && cfg.DTLS && cfg.CoAPS == "":
			return nil, errors.New("DTLS devices need the server's coaps address (--coaps or addrs.json)")
		case p != ProtoMQTT && !cfg.DTLS && cfg.CoAP == "":
			return nil, errors.New("LwM2M devices need the server's coap address (--coap or addrs.json)")
		case p == ProtoLwM2M && cfg.API == nil:
			return nil, errors.New("FOTA devices need the API to learn package versions (--api or addrs.json)")
		}
	}
	f := cfg.Fleet
	s.devices = make([]*simDevice, f.Devices)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		sem   = make(chan struct{}, cfg.Concurrency)
		errMu sync.Mutex
		first error
		nerr  int
	)
	for i := range f.Devices {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			spec := f.Device(f.First + i)
			d, err := s.startDevice(ctx, spec, i)
			if err != nil {
				errMu.Lock()
				nerr++
				if first == nil {
					first = fmt.Errorf("device %s: %w", spec.ID, err)
				}
				errMu.Unlock()
				cancel()
				return
			}
			s.devices[i] = d
		}()
	}
	wg.Wait()
	if first != nil || ctx.Err() != nil {
		s.Stop()
		if first == nil {
			first = ctx.Err()
		}
		return nil, fmt.Errorf("%d devices did not start; the first: %w", max(nerr, 1), first)
	}
	return s, nil
}

func (s *Sim) localAddr(i int) string {
	if len(s.cfg.LocalAddrs) == 0 {
		return ""
	}
	return s.cfg.LocalAddrs[(i/s.cfg.PerLocalAddr)%len(s.cfg.LocalAddrs)]
}

func (s *Sim) startDevice(ctx context.Context, spec Device, i int) (*simDevice, error) {
	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		var d *simDevice
		if d, err = s.dial(ctx, spec, i); err == nil {
			return d, nil
		}
		var se *lwm2msim.StatusError
		if errors.As(err, &se) || ctx.Err() != nil {
			return nil, err // refused: trying again changes nothing
		}
		s.log.Debug("device start failed; trying again", "device", spec.ID, "attempt", attempt, "err", err)
		t := clock.Real().NewTimer(time.Duration(attempt) * 500 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C():
		}
	}
	return nil, err
}

func (s *Sim) dial(ctx context.Context, spec Device, i int) (*simDevice, error) {
	cfg := s.cfg
	cfg.ThinkTime = time.Duration(float64(cfg.ThinkTime) * spec.Think)
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if spec.Protocol == ProtoMQTT {
		b := mqttsim.Behaviour{ThinkTime: cfg.ThinkTime, BytesPerSecond: cfg.BytesPerSecond}
		if spec.Fail {
			b.FailWith = spec.Code
			b.FailAfterDownload = spec.Code == 10
		}
		brokers := ServerList(cfg.MQTT, spread(spec.ID))
		d, err := mqttsim.Start(sctx, mqttsim.Config{
			Broker: brokers[0], Fallbacks: brokers[1:],
			DeviceID: spec.ID, Secret: spec.Secret,
			FwVersion: cfg.FwVersion, SwVersion: cfg.SwVersion,
			HTTPClient: cfg.HTTPClient, Behaviour: b, LocalAddr: s.localAddr(i),
			Logger:  s.log.With("device", spec.ID),
			OnEvent: func(ev mqttsim.Event) { s.count(ev.Kind) },
		})
		if err != nil {
			return nil, err
		}
		return &simDevice{spec: spec, mqtt: d}, nil
	}
	lc := s.lwm2mConfig(cfg, spec, i)
	d, err := lwm2msim.Start(sctx, lc)
	if err != nil {
		return nil, err
	}
	return &simDevice{spec: spec, lw: d}, nil
}

// lwm2mConfig is the configuration of the LwM2M device spec (the i-th of
// the fleet), from cfg: the simulator's, with the device's think time.
func (s *Sim) lwm2mConfig(cfg SimConfig, spec Device, i int) lwm2msim.Config {
	b := lwm2msim.Behaviour{ThinkTime: cfg.ThinkTime, BytesPerSecond: cfg.BytesPerSecond, DropRate: cfg.DropRate}
	if spec.Fail {
		if spec.Protocol == ProtoPCP {
			b.PCPResult, b.PCPFailAt = byte(spec.Code), spec.FailAt
		} else {
			b.UpdateResult = spec.Code
		}
	}
	rsrp, sinr := spec.RSRP, spec.SINR
	lc := lwm2msim.Config{
		Endpoint:  spec.ID,
		FwVersion: cfg.FwVersion, SwVersion: cfg.SwVersion,
		RSRP: &rsrp, SINR: &sinr, CellID: spec.Cell,
		ObjectsPCP: spec.Protocol == ProtoPCP, VerifyCheckCode: true,
		Behaviour: b, LocalAddr: s.localAddr(i), Lifetime: cfg.Lifetime,
		Logger:  s.log.With("device", spec.ID),
		OnEvent: func(ev lwm2msim.Event) { s.count(ev.Kind) },
	}
	servers := ServerList(cfg.CoAP, spread(spec.ID))
	if cfg.DTLS {
		servers, lc.PSK = ServerList(cfg.CoAPS, spread(spec.ID)), spec.PSK
	}
	lc.Server, lc.Fallbacks = servers[0], servers[1:]
	if cfg.API != nil {
		api := cfg.API
		log := s.log
		lc.NewVersion = func(pkg string) string {
			vctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			v, err := api.PackageVersion(vctx, pkg)
			if err != nil {
				log.Error("the version of the package being installed is unknown", "device", spec.ID, "package", pkg, "err", err)
			}
			return v
		}
	}
	return lc
}

func (s *Sim) count(kind string) {
	switch kind {
	case "command":
		s.commands.Add(1)
	case "installed":
		s.installed.Add(1)
	case "failed":
		s.failed.Add(1)
	case "reported":
		s.reported.Add(1)
	}
}

// Status counts what the devices did so far.
func (s *Sim) Status() SimStatus {
	return SimStatus{Devices: len(s.devices), Commands: s.commands.Load(), Installed: s.installed.Load(), Failed: s.failed.Load()}
}

// Stop stops every device (LwM2M devices de-register) and reports what they
// did.
func (s *Sim) Stop() SimReport {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, d := range s.devices {
		if d == nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			d.stop()
		}()
	}
	wg.Wait()
	r := SimReport{SimStatus: s.Status()}
	for _, d := range s.devices {
		if d == nil {
			continue
		}
		n := d.upgrades()
		r.Upgrades += n
		if n > 1 {
			r.UpgradedTwice++
			if len(r.TwiceIDs) < 100 {
				r.TwiceIDs = append(r.TwiceIDs, d.spec.ID)
			}
		}
	}
	return r
}

// DevicesPerLocalAddr is how many simulated devices share one local IP: one
// address has about 28k ephemeral ports for the whole machine, and a device
// may hold a download connection beside its own socket.
const DevicesPerLocalAddr = 16000

// LoopbackIP returns the n-th loopback IPv4 address (n ≥ 1): 127.0.0.1,
// 127.0.0.2, … 127.0.1.0, …
func LoopbackIP(n int) string {
	return fmt.Sprintf("127.0.%d.%d", n/256, n%256)
}

// LoopbackAddrs returns n loopback IPs 127.0.0.1 … for LocalAddrs, when
// server is a loopback address; nil otherwise.
func LoopbackAddrs(server string, n int) []string {
	host, _, err := net.SplitHostPort(server)
	if err != nil {
		host = server
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() || ip.To4() == nil {
		return nil
	}
	out := make([]string, n)
	for i := range out {
		out[i] = LoopbackIP(i + 1)
	}
	return out
}

// ServerList splits a comma-separated list of server addresses and
// rotates it to start at element i mod its length: device i's server and,
// after it, those it fails over to. A list without a comma is itself.
func ServerList(list string, i int) []string {
	var out []string
	for a := range strings.SplitSeq(list, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return []string{""}
	}
	k := i % len(out)
	return append(out[k:], out[:k]...)
}

// spread is where in a server list a device starts: a hash of its ID.
func spread(id string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return int(h.Sum32() & 0x7fffffff)
}
