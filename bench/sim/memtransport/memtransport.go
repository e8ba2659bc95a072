package memtransport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport"
)

// Errors of the Transport. Send wraps them with the device ID.
var (
	ErrUnknownDevice = errors.New("memtransport: unknown device")
	ErrOffline       = errors.New("memtransport: device offline")
	ErrClosed        = errors.New("memtransport: transport closed")
	ErrDuplicate     = errors.New("memtransport: device already added")
	ErrNotQueueMode  = errors.New("memtransport: device is not in queue mode")
)

// Counters count what simulated devices saw and did; Stats sums them over
// all devices. Counters marked durable survive a restart with a state file.
type Counters struct {
	Downlinks     int // downlinks that reached a device (held ones when delivered)
	Dropped       int // downlinks lost because the device was offline
	Uplinks       int // inputs handed to Uplinks.Deliver (presence included)
	DeliverErrors int // of which Deliver returned an error
	UpgradeEvents int // MQTT upgrade events received (durable)
	URIWrites     int // package URIs written to /5/0/1 (durable)
	Executes      int // Executes of /5/0/2 received, refused ones included (durable)
	PCPNotifies   int // PCP 0x14 received
	PCPExecutes   int // PCP 0x17 received, refused ones included (durable)
	Segments      int // PCP segments fetched (0x15 answered with success)
	Downloads     int // downloads started; resumptions are not counted (durable)
	Upgrades      int // installs completed (durable)
	Revocations   int // download tokens revoked
}

type ctr int

const (
	cDownlinks ctr = iota
	cDropped
	cUplinks
	cDeliverErrors
	cUpgradeEvents
	cURIWrites
	cExecutes
	cPCPNotifies
	cPCPExecutes
	cSegments
	cDownloads
	cUpgrades
	cRevocations
	nCtr
)

type counts [nCtr]int

func (c *counts) export() Counters {
	return Counters{
		Downlinks: c[cDownlinks], Dropped: c[cDropped], Uplinks: c[cUplinks], DeliverErrors: c[cDeliverErrors],
		UpgradeEvents: c[cUpgradeEvents], URIWrites: c[cURIWrites], Executes: c[cExecutes],
		PCPNotifies: c[cPCPNotifies], PCPExecutes: c[cPCPExecutes], Segments: c[cSegments],
		Downloads: c[cDownloads], Upgrades: c[cUpgrades], Revocations: c[cRevocations],
	}
}

// Transport is the in-memory transport: a set of scripted devices that
// answer the engine's downlinks through Uplinks. It implements
// transport.Downlinks and is safe for concurrent use.
type Transport struct {
	cfg    Config
	delays Delays
	clk    clock.Clock
	up     transport.LateUplinks
	log    *slog.Logger
	ctx    context.Context // for deliveries from timers; cancelled by Close
	cancel context.CancelFunc
	state  *stateFile // nil without Config.StateFile

	mu      sync.RWMutex
	devices map[string]*device
	order   []string          // IDs in the order added
	saved   map[string]record // reloaded records of devices not added yet
	closed  bool

	smu     sync.Mutex
	totals  counts
	changed chan struct{} // closed and replaced on every change of totals
}

var _ transport.Downlinks = (*Transport)(nil)

// New returns a Transport that delivers the devices' uplinks to up and arms
// every reaction on clk. With cfg.StateFile set it reloads the file (a torn
// last line is dropped); a file damaged elsewhere is an error wrapping
// ErrCorruptState. A nil logger discards logs.
func New(cfg Config, clk clock.Clock, up transport.Uplinks, logger *slog.Logger) (*Transport, error) {
	if clk == nil || up == nil {
		return nil, fmt.Errorf("memtransport: New needs a clock and an Uplinks")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	t := &Transport{
		cfg: cfg, delays: cfg.Delays.withDefaults(), clk: clk,
		log:     logger.With("component", "memtransport"),
		devices: map[string]*device{}, saved: map[string]record{},
		changed: make(chan struct{}),
	}
	if cfg.StateFile != "" {
		sf, recs, err := openStateFile(cfg.StateFile)
		if err != nil {
			return nil, err
		}
		t.state, t.saved = sf, recs
	}
	t.up.Set(up)
	t.ctx, t.cancel = context.WithCancel(context.Background())
	return t, nil
}

// SetUplinks makes later deliveries go to up: an in-process engine that was
// rebuilt after a simulated crash takes over the same devices.
func (t *Transport) SetUplinks(up transport.Uplinks) {
	if up != nil {
		t.up.Set(up)
	}
}

// Add adds a device, offline until Connect. With a state file, the device's
// saved facts (versions, durable counters, an install in progress, which
// completes now) replace those of spec.
func (t *Transport) Add(spec DeviceSpec) error {
	if err := spec.validate(); err != nil {
		return err
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return ErrClosed
	}
	if _, ok := t.devices[spec.ID]; ok {
		t.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrDuplicate, spec.ID)
	}
	d := newDevice(t, spec)
	rec, saved := t.saved[spec.ID]
	delete(t.saved, spec.ID)
	t.devices[spec.ID] = d
	t.order = append(t.order, spec.ID)
	t.mu.Unlock()

	d.mu.Lock()
	defer d.mu.Unlock()
	if saved {
		d.restore(rec)
	}
	t.add(d.cnt)
	if d.installing != "" {
		d.completeInstall() // the install ran while the simulator was down
		d.upgraded = nil    // not an upgrade of this run: no OnUpgrade
	}
	return nil
}

// IDs returns the devices' IDs in the order they were added.
func (t *Transport) IDs() []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return slices.Clone(t.order)
}

func (t *Transport) device(id string) (*device, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed {
		return nil, ErrClosed
	}
	d, ok := t.devices[id]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownDevice, id)
	}
	return d, nil
}

// Send hands dl to its device, which sees it Delays.Network later. It never
// blocks on a device: the reaction is scheduled on the clock. It reports an
// unknown device, a closed transport, and a device that is offline (the
// downlink is lost, as on a real network); a downlink for an asleep
// queue-mode device is held until it wakes.
func (t *Transport) Send(ctx context.Context, dl *messages.Downlink) error {
	if dl == nil || dl.Kind == nil {
		return fmt.Errorf("memtransport: Send of a downlink without kind")
	}
	d, err := t.device(dl.GetDeviceId())
	if err != nil {
		return err
	}
	if !d.online.Load() {
		d.sendDropped.Add(1) // not under d.mu: Send never waits for a device
		t.bump(cDropped)
		t.notify()
		return fmt.Errorf("%w: %s", ErrOffline, d.id)
	}
	d.after(t.delays.Network, true, func() { d.downlink(dl) })
	return nil
}

// RevokeToken invalidates a download token: an MQTT device still
// downloading with the token of that task and attempt aborts its download.
func (t *Transport) RevokeToken(ctx context.Context, r *messages.RevokeToken) error {
	if r == nil {
		return fmt.Errorf("memtransport: RevokeToken without a token")
	}
	d, err := t.device(r.GetDeviceId())
	if err != nil {
		return err
	}
	d.after(t.delays.Network, false, func() { d.revoke(r) })
	return nil
}

// Connect registers a device anew (MQTT CONNECT, LwM2M Register; queue mode
// per its spec) and delivers Connected before it returns, as a device does
// when it (re)connects to a (re)started server. Observations of an earlier
// session are gone; a connected device starts a new session. It returns
// Deliver's error.
func (t *Transport) Connect(ctx context.Context, id string) error {
	d, err := t.device(id)
	if err != nil {
		return err
	}
	return d.run(ctx, d.connect)
}

// ConnectAll connects every device, in the order they were added.
func (t *Transport) ConnectAll(ctx context.Context) error {
	var errs []error
	for _, id := range t.IDs() {
		if err := t.Connect(ctx, id); err != nil {
			errs = append(errs, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return errors.Join(errs...)
}

// Disconnect takes a device offline and delivers Disconnected: downlinks in
// flight and replies not yet sent are lost, a download pauses. An install in
// progress completes; its result waits for the next session.
func (t *Transport) Disconnect(ctx context.Context, id string) error {
	d, err := t.device(id)
	if err != nil {
		return err
	}
	return d.run(ctx, func() { d.goOffline(false) })
}

// Sleep puts an online queue-mode device to sleep and delivers Asleep.
// Downlinks that reach it while asleep are held until it wakes.
func (t *Transport) Sleep(ctx context.Context, id string) error {
	d, err := t.device(id)
	if err != nil {
		return err
	}
	if !d.spec.QueueMode {
		return fmt.Errorf("%w: %s", ErrNotQueueMode, id)
	}
	return d.run(ctx, d.sleep)
}

// Wake wakes a queue-mode device with a registration update (Uplink) and
// lets it handle the downlinks held while it slept.
func (t *Transport) Wake(ctx context.Context, id string) error {
	d, err := t.device(id)
	if err != nil {
		return err
	}
	if !d.spec.QueueMode {
		return fmt.Errorf("%w: %s", ErrNotQueueMode, id)
	}
	return d.run(ctx, d.wake)
}

// DeviceState is a snapshot of one simulated device.
type DeviceState struct {
	ID         string
	Protocol   messages.Protocol
	FwVersion  string
	SwVersion  string
	Online     bool
	Awake      bool
	QueueMode  bool
	Observed   []string // LwM2M paths observed in the current session, sorted
	FotaState  int32    // object 5 State (/5/0/3)
	FotaResult int32    // object 5 Update Result (/5/0/5)
	Installing string   // version being installed, if any
	Counters   Counters
}

// Device returns a snapshot of device id.
func (t *Transport) Device(id string) (DeviceState, bool) {
	t.mu.RLock()
	d, ok := t.devices[id]
	t.mu.RUnlock()
	if !ok {
		return DeviceState{}, false
	}
	return d.snapshot(), true
}

// Stats returns the counters summed over all devices.
func (t *Transport) Stats() Counters {
	t.smu.Lock()
	defer t.smu.Unlock()
	return t.totals.export()
}

// Changed returns a channel that is closed at the next change of Stats.
// Take it before reading Stats to wait without missing a change.
func (t *Transport) Changed() <-chan struct{} {
	t.smu.Lock()
	defer t.smu.Unlock()
	return t.changed
}

// Wait blocks until cond holds for Stats, or ctx ends. cond is evaluated at
// once and after every change.
func (t *Transport) Wait(ctx context.Context, cond func(Counters) bool) error {
	for {
		ch := t.Changed()
		if cond(t.Stats()) {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("memtransport: wait: %w (stats %+v)", ctx.Err(), t.Stats())
		}
	}
}

// Close stops every pending reaction and closes the state file. Later calls
// return ErrClosed; reactions that fire after Close do nothing.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	devs := make([]*device, 0, len(t.devices))
	for _, d := range t.devices {
		devs = append(devs, d)
	}
	t.mu.Unlock()
	t.cancel()
	for _, d := range devs {
		d.stopAll()
	}
	if t.state != nil {
		// Wait for runs in progress, so that no append races the close.
		for _, d := range devs {
			d.runMu.Lock()
			d.runMu.Unlock()
		}
		return t.state.close()
	}
	return nil
}

func (t *Transport) isClosed() bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.closed
}

// add adds c to the totals (under a device lock is fine: smu is innermost).
func (t *Transport) add(c counts) {
	t.smu.Lock()
	for i, v := range c {
		t.totals[i] += v
	}
	t.smu.Unlock()
}

func (t *Transport) bump(c ctr) {
	t.smu.Lock()
	t.totals[c]++
	t.smu.Unlock()
}

// notify wakes the waiters of Changed.
func (t *Transport) notify() {
	t.smu.Lock()
	close(t.changed)
	t.changed = make(chan struct{})
	t.smu.Unlock()
}
