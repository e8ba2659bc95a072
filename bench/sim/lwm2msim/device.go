package lwm2msim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"

	"strconv"
	"strings"
	"sync"
	"time"

	piondtls "github.com/pion/dtls/v3"
	dtlsnet "github.com/pion/dtls/v3/pkg/net"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/mux"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/options/config"
	"github.com/plgd-dev/go-coap/v3/pkg/runner/periodic"
	"github.com/plgd-dev/go-coap/v3/udp"
	"github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport/lwm2m"
	"github.com/otafleet/otafleet/transport/lwm2m/lwm2mcodec"
)

// Behaviour makes a device misbehave on purpose. The zero value is a device
// that upgrades successfully.
type Behaviour struct {
	// UpdateResult, if non-zero, makes the FOTA update fail with this Update
	// Result instead of 1. Codes 7 (invalid URI) and 9 (unsupported
	// protocol) fail at once when the Package URI is written (State stays
	// 0); 2 to 6 fail once the download is complete (State 1 → 0); any
	// other code (8, firmware update failed) fails the update itself, after
	// UpdateDelay (State 3 → 2).
	UpdateResult int
	// PCPResult, if non-zero, is the result code that the PCP step PCPFailAt
	// answers: the 0x14 response (the device refuses the upgrade), the 0x16
	// download result, the 0x17 response (it refuses to execute) or the
	// 0x18 upgrade result (the installation failed; it reports its old
	// version).
	PCPResult byte
	PCPFailAt messages.PcpCode
	// StopAfterBlocks > 0: during the first download (FOTA blocks or PCP
	// segments), after this many blocks or segments the device restarts:
	// it goes silent (no de-registration, its socket closed), waits
	// RestartDelay, registers anew from a new socket and resumes from the
	// next block or segment (PCP: once the server observes /19/0/0 again).
	StopAfterBlocks int
	RestartDelay    time.Duration // default 100ms
	// RebootOnUpdate: to install, the device restarts (as for
	// StopAfterBlocks) and reports the outcome after the new registration:
	// FOTA through the reads and observations the server makes, PCP with an
	// unsolicited 0x18 once /19/0/0 is observed again.
	RebootOnUpdate bool
	// StrictURI: like real LwM2M clients, the device takes a Package URI in
	// State 0 (Idle) only (LwM2M 1.1 E.6) and refuses it with 4.00
	// otherwise: while it downloads, even the same URI, and in State 2
	// after a failed update, until an empty write resets object 5. Without
	// it the same URI written again continues the download.
	StrictURI bool
	// Silent: the device registers and keeps its registration up to date,
	// but answers no request (they are dropped, not even acknowledged).
	Silent      bool
	UpdateDelay time.Duration // time to install after Execute / 0x17; default 100ms
	// QueueMode registers with binding UQ: the device answers requests only
	// within AwakeWindow (default 10s) after each message it sends.
	QueueMode   bool
	AwakeWindow time.Duration
	// ThinkTime is how long, on Clock, the device thinks before it acts on
	// an upgrade command: FOTA, after it answered the Package URI write,
	// before its first block request, and after it answered Execute,
	// before installing (on top of UpdateDelay); PCP, after it answered
	// the 0x14 notification, before its first 0x15 segment request, and
	// after it answered the 0x17, before installing (on top of
	// UpdateDelay). The answers themselves (CoAP 2.04, the PCP responses)
	// are never delayed. Zero: no thinking.
	ThinkTime time.Duration
	// BytesPerSecond caps the device's download rate (0: unlimited): after
	// each Block2 block (FOTA) or PCP segment it takes in, the device waits
	// on Clock until the bytes received since the download started (or
	// resumed after a restart) are within start + bytes/BytesPerSecond
	// before it asks for the next one or, after the last, completes the
	// download. A package of S bytes takes about S/BytesPerSecond. Stop
	// ends the wait.
	BytesPerSecond int64
	// DropRate, 0 to 1, is the share of the datagrams the device receives
	// that it loses before anything handles them, at random, as a lossy
	// radio would: the server's answers (block responses among them),
	// acknowledgements and requests. What the device sends is not lost.
	// CoAP's retransmissions, and the server's probes, must make up for
	// it (loss tests and benches: sim --drop-rate). Zero: none.
	DropRate float64
}

// Config describes a simulated device.
type Config struct {
	Server string // "127.0.0.1:5683"
	// Fallbacks are more servers (of one cluster), tried in order after
	// Server: when the first registration fails, and when a registered
	// session's connection is lost (the server went away) or registering
	// again after that fails; after the last comes Server again.
	Fallbacks []string
	Endpoint  string // the device ID, sent as ep
	// PSK, when set, makes the device talk DTLS 1.2 (TLS_PSK_WITH_AES_128_CCM_8)
	// to Server (the server's DTLS address), with Endpoint as PSK identity.
	PSK      []byte
	Lifetime time.Duration // registration lifetime; default 300s; updates every Lifetime/2
	// LwM2MVersion is sent as lwm2m= in the registration: "1.0", "1.1"
	// (default) or "1.2".
	LwM2MVersion string
	// FwVersion (/3/0/3) and SwVersion (/3/0/19, PCP 0x13): the current
	// versions; a successful upgrade replaces the one of its kind.
	FwVersion, SwVersion string
	// Radio values of object 4: /4/0/2 RSRP and /4/0/11 SINR (nil: the
	// resource is absent), /4/0/8 cell ID (0: absent).
	RSRP, SINR *int32
	CellID     int64
	// ObjectsPCP: the device has object 19 and upgrades its software over
	// PCP.
	ObjectsPCP bool
	// RadioFormat is the content format of reads of /4/0 (and of any other
	// instance or object) that carry no Accept option: 11542 TLV (default),
	// 110 SenML JSON, 112 SenML CBOR or 11543 LwM2M JSON.
	RadioFormat uint16
	// BlockSize is the Block2 size the device asks for when it downloads a
	// firmware package: 16 to 1024, a power of two; default 1024 (SZX 6).
	BlockSize int
	// NewVersion gives the firmware version a package installs, from its
	// package ID, the last path segment of the Package URI. Default: the
	// package ID itself.
	NewVersion func(packageID string) string
	// RequestTimeout bounds each request the device sends. It is network
	// time: it runs on the wall clock, as go-coap's retransmissions do, not
	// on Clock, so that a test moving a fake clock does not cancel messages
	// in flight. Default 30s.
	RequestTimeout time.Duration
	// NotifyTimeout bounds the wait for a CON notification's
	// acknowledgement, the notification sent again meanwhile (see
	// session.send); network time like RequestTimeout. Default 93s, CoAP's
	// MAX_TRANSMIT_WAIT (RFC 7252 4.8.2).
	NotifyTimeout time.Duration
	// SegmentTimeout is the wait, on Clock, before an unanswered PCP
	// segment request is sent again. Default 30s.
	SegmentTimeout time.Duration
	// NotifyNON sends notifications as NON messages (default CON).
	NotifyNON bool
	// VerifyCheckCode: a non-zero check code of the 0x14 notification must
	// equal pcp.CheckCode of the downloaded package's SHA-256, else the
	// 0x16 download result is 0x07 (package verification failed). Off by
	// default: a legacy versionCheckCode cannot be checked.
	VerifyCheckCode bool
	Behaviour       Behaviour
	Clock           clock.Clock  // nil: clock.Real()
	Logger          *slog.Logger // nil: discard
	// LocalAddr is the local IP address the device's sockets bind to, e.g.
	// "127.0.0.2" (the port is the system's choice), so that a simulator
	// can spread many devices over several local addresses; "" lets the
	// system choose. It applies to the UDP socket and to the DTLS one, and
	// to the new socket of each restart.
	LocalAddr string
	// OnEvent, if set, is told of the device's upgrade events (see
	// [Event] and the Event* constants), so that a simulator can measure
	// without polling. Calls come one at a time, in the order of the
	// events, from the device's goroutines (a go-coap handler, a clock
	// timer, the download), never with the device's lock held: OnEvent may
	// call the Device's methods except Stop. It must not block: the device
	// waits for it, and so may the answer to the server's request that
	// caused the event.
	OnEvent func(Event)

	// hook, if set (tests), is told of the device's events: "registered",
	// "update", "ignored" (a request dropped), "restarting" (the restart
	// timer is armed), "thinking" and "paced" (the timer of a ThinkTime or
	// BytesPerSecond wait before the next download step is armed). It is
	// called with the device's lock held: it must not block nor call the
	// Device.
	hook func(event string)
}

// Stats counts what a device did.
type Stats struct {
	// Registrations counts the successful registrations (the first, and
	// those after a restart or an update answered 4.04); Updates the
	// registration updates answered 2.04.
	Registrations, Updates int
	// BlocksFetched counts the Block2 responses received with data (FOTA),
	// SegmentsFetched the PCP segments stored.
	BlocksFetched, SegmentsFetched int
	// Executes counts the updates started (FOTA Execute answered 2.04, PCP
	// 0x17 answered 0x00); Upgrades the versions installed.
	Executes, Upgrades int
	// Restarts counts the simulated restarts and reboots; Reconnects the
	// times the device's connection was closed under it (an ICMP
	// port-unreachable after the server went away) and it set out to
	// register again from a new socket.
	Restarts, Reconnects int
	// Notifications counts the notifications handed to the network (the
	// acknowledgement of a CON one may still be due); Ignored the requests
	// dropped while asleep (queue mode) or Silent; Lost the datagrams
	// Behaviour.DropRate lost.
	Notifications, Ignored, Lost int
	// Unacknowledged counts the CON notifications never acknowledged in
	// time: the device dropped their observations (RFC 7641 4.5).
	Unacknowledged int
	// SHA256 is the hex SHA-256 of the last complete download (FOTA or PCP).
	SHA256 string
}

// StatusError is a request of the device answered with an unexpected CoAP
// code, e.g. a registration refused with 4.03 Forbidden.
type StatusError struct {
	Op   string // "register", "update", "deregister"
	Code codes.Code
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("lwm2msim: %s answered %v", e.Op, e.Code)
}

// Device is a running simulated device.
type Device struct {
	cfg Config
	clk clock.Clock
	log *slog.Logger

	servers []string // Server, then Fallbacks
	srv     int      // the index in servers of the server connect dials; under mu

	ctx    context.Context // cancelled by Stop
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// runner drives go-coap's retransmissions and cache expiry for the
	// device's sockets, every second (go-coap's default ticks every 4 s and
	// outlives the socket as long); it ends with ctx.
	runner periodic.Func

	stopOnce sync.Once

	mu           sync.Mutex
	stopped      bool
	sess         *session      // the current session; nil while restarting
	zombie       *session      // the session a restart silenced, closed when the next one opens
	sessUp       chan struct{} // closed and replaced when a session registers
	fw, sw       string
	stats        Stats
	lastUplink   time.Time // when the device last sent a message
	obsSeq       uint32    // the last Observe sequence number used
	restarted    bool      // the StopAfterBlocks restart has happened
	updateTimer  clock.Timer
	restartTimer clock.Timer
	// backoff > 0: the device is registering again after it lost its
	// connection, or after a failed registration following a restart; the
	// next attempt waits RestartDelay << (backoff-1), at most
	// maxReconnectDelay. Zero once a registration succeeds.
	backoff int
	fota    fotaState
	pcp     pcpState

	localIP net.IP     // Config.LocalAddr parsed; nil: the system's choice
	ev      eventQueue // to Config.OnEvent
}

const (
	defaultLifetime       = 300 * time.Second
	defaultDelay          = 100 * time.Millisecond
	defaultAwakeWindow    = 10 * time.Second
	defaultRequestTimeout = 30 * time.Second
	defaultNotifyTimeout  = 93 * time.Second // MAX_TRANSMIT_WAIT
	// notifyAttempt is how long go-coap waits for the acknowledgement of a
	// CON message it sent, its retransmissions included: with its defaults
	// (ACK timeout 2 s, 4 retransmissions) it sends a copy every 2 s and
	// forgets the message after the fifth; an acknowledgement that comes
	// later matches nothing.
	notifyAttempt    = 10 * time.Second
	defaultBlockSize = 1024
	// stopTimeout bounds Stop's de-registration (network time).
	stopTimeout = 5 * time.Second
	// coapTick is the period of go-coap's housekeeping (retransmissions).
	coapTick = time.Second
	// blockwiseTransferTimeout is go-coap's block-wise setting; block-wise
	// is off on the device's connection, the value is unused.
	blockwiseTransferTimeout = 10 * time.Second
	// udpDialTimeout is go-coap's default dial timeout, kept when the
	// device dials with its own net.Dialer (LocalAddr).
	udpDialTimeout = 3 * time.Second
	// maxReconnectDelay caps the wait between two registration attempts
	// after a lost connection or a failed registration.
	maxReconnectDelay = 30 * time.Second
)

var errStopped = errors.New("lwm2msim: device stopped")

// Start registers the device with the server and serves it until Stop. It
// returns the registration's outcome: a *StatusError when the server
// answers other than 2.01 (4.03 for an unknown endpoint), or a network
// error. ctx bounds only the registration; the device then runs until Stop.
func Start(ctx context.Context, cfg Config) (*Device, error) {
	if cfg.Endpoint == "" {
		return nil, errors.New("lwm2msim: empty Endpoint")
	}
	if cfg.Server == "" {
		return nil, errors.New("lwm2msim: empty Server")
	}
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = defaultLifetime
	}
	if cfg.LwM2MVersion == "" {
		cfg.LwM2MVersion = "1.1"
	}
	switch cfg.RadioFormat {
	case 0:
		cfg.RadioFormat = lwm2mcodec.FormatTLV
	case lwm2mcodec.FormatTLV, lwm2mcodec.FormatSenMLJSON, lwm2mcodec.FormatSenMLCBOR, lwm2mcodec.FormatLwM2MJSON:
	default:
		return nil, fmt.Errorf("lwm2msim: RadioFormat %d: want 11542, 110, 112 or 11543", cfg.RadioFormat)
	}
	var localIP net.IP
	if cfg.LocalAddr != "" {
		if localIP = net.ParseIP(cfg.LocalAddr); localIP == nil {
			return nil, fmt.Errorf("lwm2msim: LocalAddr %q: want an IP address", cfg.LocalAddr)
		}
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = defaultBlockSize
	}
	if _, ok := szxOf(cfg.BlockSize); !ok {
		return nil, fmt.Errorf("lwm2msim: BlockSize %d: want a power of two from 16 to 1024", cfg.BlockSize)
	}
	if cfg.NewVersion == nil {
		cfg.NewVersion = func(id string) string { return id }
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = defaultRequestTimeout
	}
	if cfg.NotifyTimeout <= 0 {
		cfg.NotifyTimeout = defaultNotifyTimeout
	}
	if cfg.SegmentTimeout <= 0 {
		cfg.SegmentTimeout = defaultRequestTimeout
	}
	b := &cfg.Behaviour
	if !(b.DropRate >= 0 && b.DropRate <= 1) {
		return nil, fmt.Errorf("lwm2msim: DropRate %v: want 0 to 1", b.DropRate)
	}
	if b.RestartDelay <= 0 {
		b.RestartDelay = defaultDelay
	}
	if b.UpdateDelay <= 0 {
		b.UpdateDelay = defaultDelay
	}
	if b.AwakeWindow <= 0 {
		b.AwakeWindow = defaultAwakeWindow
	}
	d := &Device{
		cfg:     cfg,
		clk:     cfg.Clock,
		log:     cfg.Logger,
		fw:      cfg.FwVersion,
		sw:      cfg.SwVersion,
		sessUp:  make(chan struct{}),
		localIP: localIP,
		ev:      eventQueue{fn: cfg.OnEvent},
	}
	if d.clk == nil {
		d.clk = clock.Real()
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.log = d.log.With("endpoint", cfg.Endpoint)
	d.ctx, d.cancel = context.WithCancel(context.WithoutCancel(ctx))
	d.runner = periodic.New(d.ctx.Done(), coapTick)
	d.servers = append([]string{cfg.Server}, cfg.Fallbacks...)
	var err error
	for range d.servers {
		if _, err = d.connect(ctx); err == nil || ctx.Err() != nil {
			break
		}
		d.log.Info("lwm2msim: registration failed, trying the next server", "server", d.server(), "err", err)
		d.mu.Lock()
		d.nextServerLocked()
		d.mu.Unlock()
	}
	if err != nil {
		d.Stop()
		return nil, fmt.Errorf("lwm2msim: device %s: %w", cfg.Endpoint, err)
	}
	d.log.Info("lwm2msim: registered", "server", d.server())
	return d, nil
}

// server is the address connect dials now.
func (d *Device) server() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.servers[d.srv]
}

// nextServerLocked moves to the next server of the list (failover). d.mu
// is held.
func (d *Device) nextServerLocked() {
	d.srv = (d.srv + 1) % len(d.servers)
}

// Server returns the address of the server the device registers with now.
func (d *Device) Server() string { return d.server() }

// szxOf returns the SZX of a block size.
func szxOf(size int) (blockwise.SZX, bool) {
	for szx := blockwise.SZX16; szx <= blockwise.SZX1024; szx++ {
		if int(szx.Size()) == size {
			return szx, true
		}
	}
	return 0, false
}

// Stop de-registers the device (waiting at most 5 s for the answer), closes
// its socket and waits for its goroutines.
func (d *Device) Stop() {
	d.stopOnce.Do(func() {
		d.mu.Lock()
		d.stopped = true
		for _, t := range []clock.Timer{d.updateTimer, d.restartTimer, d.fota.timer, d.pcp.installTimer, d.pcp.segTimer} {
			if t != nil {
				t.Stop()
			}
		}
		s, z := d.sess, d.zombie
		d.mu.Unlock()
		if z != nil {
			z.close()
		}
		if s != nil && s.location() != "" {
			ctx, cancel := context.WithCancel(context.Background())
			t := netClock.AfterFunc(stopTimeout, cancel)
			if err := d.deregister(ctx, s); err != nil {
				d.log.Info("lwm2msim: de-register", "err", err)
			}
			t.Stop()
			cancel()
		}
		d.cancel()
		if s != nil {
			s.close()
		}
		d.wg.Wait()
		d.log.Info("lwm2msim: stopped")
	})
}

// Versions returns the device's current firmware and software versions.
func (d *Device) Versions() (fw, sw string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fw, d.sw
}

// Stats returns the device's counters.
func (d *Device) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

// FirmwareState returns object 5's State (/5/0/3) and Update Result
// (/5/0/5).
func (d *Device) FirmwareState() (state, result int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fota.state, d.fota.result
}

// LocalAddr returns the address of the device's current UDP socket ("" while
// it restarts): each restart opens a new one.
func (d *Device) LocalAddr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.sess == nil || d.sess.conn == nil {
		return ""
	}
	return d.sess.conn.LocalAddr().String()
}

// Wake sends a registration update now (in queue mode: the device wakes up
// and opens its awake window) and returns once the server answered. The
// periodic updates continue Lifetime/2 after it.
func (d *Device) Wake() error {
	if !d.enter() {
		return errStopped
	}
	defer d.wg.Done()
	if err := d.update(d.ctx); err != nil {
		return err
	}
	d.mu.Lock()
	d.armUpdateLocked()
	d.mu.Unlock()
	return nil
}

// goTracked runs f in a goroutine that Stop waits for; false (and f does not
// run) once Stop began.
func (d *Device) goTracked(f func()) bool {
	if !d.enter() {
		return false
	}
	go func() {
		defer d.wg.Done()
		f()
	}()
	return true
}

// goTrackedLocked is goTracked with d.mu held.
func (d *Device) goTrackedLocked(f func()) bool {
	if d.stopped {
		return false
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		f()
	}()
	return true
}

// enter registers a goroutine with Stop's wait group unless Stop began; the
// caller calls d.wg.Done when it returns true.
func (d *Device) enter() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return false
	}
	d.wg.Add(1)
	return true
}

// hookLocked tells the test hook of an event; d.mu is held.
func (d *Device) hookLocked(event string) {
	if d.cfg.hook != nil {
		d.cfg.hook(event)
	}
}

// netClock times the network: how long a request waits for its answer and
// a CON notification for its acknowledgement. It is the wall clock, as for
// go-coap's retransmissions, not Config.Clock: a test that moves its fake
// clock by hours must not cancel the messages in flight.
var netClock = clock.Real()

// reqCtx returns a context for one request: parent, cancelled after
// RequestTimeout on the wall clock.
func (d *Device) reqCtx(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	t := netClock.AfterFunc(d.cfg.RequestTimeout, cancel)
	return ctx, func() {
		t.Stop()
		cancel()
	}
}

// markUplink notes that the device sends a message now: in queue mode it
// stays awake for AwakeWindow.
func (d *Device) markUplink() {
	d.mu.Lock()
	d.lastUplink = d.clk.Now()
	d.mu.Unlock()
}

// awakeLocked reports whether the device answers requests now.
func (d *Device) awakeLocked() bool {
	if d.cfg.Behaviour.Silent {
		return false
	}
	if !d.cfg.Behaviour.QueueMode {
		return true
	}
	return d.clk.Now().Before(d.lastUplink.Add(d.cfg.Behaviour.AwakeWindow))
}

// monitor is go-coap's request monitor of session s: it sees every
// datagram the device receives, before any processing. It drops everything
// once a restart silenced the session, a share Behaviour.DropRate of the
// rest, and the requests (and CoAP pings)
// that arrive while the device sleeps or is Silent. Responses and
// acknowledgements pass otherwise.
func (d *Device) monitor(s *session, m *pool.Message) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s.dead {
		return true, nil
	}
	if r := d.cfg.Behaviour.DropRate; r > 0 && rand.Float64() < r {
		d.stats.Lost++
		return true, nil
	}
	isRequest := m.Code() >= codes.GET && m.Code() < 32 // class 0: methods
	isPing := m.Code() == codes.Empty && m.Type() == message.Confirmable
	if !isRequest && !isPing {
		return false, nil
	}
	if d.awakeLocked() {
		return false, nil
	}
	d.stats.Ignored++
	d.log.Debug("lwm2msim: request ignored (asleep)", "code", m.Code())
	d.hookLocked("ignored")
	return true, nil
}

// requestMonitorOpt sets the UDP client's request monitor, for which
// go-coap has no client option.
type requestMonitorOpt client.RequestMonitorFunc

func (o requestMonitorOpt) UDPClientApply(cfg *client.Config) {
	cfg.RequestMonitor = client.RequestMonitorFunc(o)
}

// Sessions.

// session is one UDP socket and the registration made over it. A restart
// closes it and opens another.
type session struct {
	d    *Device
	conn *client.Conn // set before the session is shared

	// guarded by d.mu
	loc       string               // registration location, "/rd/1"; "" until registered
	observers map[string]*observer // by token
	queue     []outMsg             // notifications waiting for the sender
	hold      int                  // > 0: a received message is being handled, its answer not yet sent
	dead      bool

	kick      chan struct{} // wakes the sender
	done      chan struct{} // closed by close
	closeOnce sync.Once
}

func (s *session) location() string {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	return s.loc
}

// process is go-coap's processing of a received message (request or
// response): the handler runs, then go-coap writes the answer. The
// notifications that the handler queues wait until that answer is out, so
// that the first answer of an observation precedes its notifications.
//
// A Reset is never answered (RFC 7252 4.2, 4.3: rejecting a Reset is
// silently ignoring it). go-coap hands every received Reset to the handler
// here, the one that matched a message of the device's (already seen by
// that message's waiter) as well as one that matched nothing, and the
// router answers its empty code with a CON 4.05 under a new Message ID; a
// server that rejects that unexpected response with a Reset, as
// otafleet's does, then gets another 4.05 at once, for ever: a datagram
// storm between the two that one stray Reset starts (after a node of a
// cluster died, it burned both the survivors' CPU and the simulator's).
func (s *session) process(req *pool.Message, cc *client.Conn, handler config.HandlerFunc[*client.Conn]) {
	if req.Type() == message.Reset {
		cc.ReleaseMessage(req)
		return
	}
	d := s.d
	d.mu.Lock()
	s.hold++
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		s.hold--
		d.mu.Unlock()
		s.wake()
	}()
	cc.ProcessReceivedMessageWithHandler(req, handler)
}

// wake tells the sender that there may be work.
func (s *session) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// close ends the session: its sender stops and its socket closes.
func (s *session) close() {
	s.closeOnce.Do(func() {
		close(s.done)
		if s.conn != nil {
			_ = s.conn.Close()
		}
	})
}

// connect opens a socket to the server and registers over it; the session
// becomes the device's current one.
func (d *Device) connect(ctx context.Context) (*session, error) {
	s := &session{
		d:         d,
		observers: map[string]*observer{},
		kick:      make(chan struct{}, 1),
		done:      make(chan struct{}),
	}
	router := mux.NewRouter()
	router.SetErrorHandler(func(err error) { d.log.Debug("lwm2msim: router", "err", err) })
	router.DefaultHandle(mux.HandlerFunc(func(w mux.ResponseWriter, r *mux.Message) { d.serve(s, w, r) }))
	server := d.server()
	dial := func(opts ...udp.Option) (*client.Conn, error) { return udp.Dial(server, opts...) }
	var laddr *net.UDPAddr // nil: the system's choice
	if d.localIP != nil {
		laddr = &net.UDPAddr{IP: d.localIP}
		dialer := &net.Dialer{Timeout: udpDialTimeout, LocalAddr: laddr}
		dial = func(opts ...udp.Option) (*client.Conn, error) {
			return udp.Dial(server, append(opts, options.WithDialer(dialer))...)
		}
	}
	if psk := d.cfg.PSK; psk != nil {
		dcfg := &piondtls.Config{
			PSK:             func([]byte) ([]byte, error) { return psk, nil },
			PSKIdentityHint: []byte(d.cfg.Endpoint),
			CipherSuites:    []piondtls.CipherSuiteID{piondtls.TLS_PSK_WITH_AES_128_CCM_8},
		}
		dial = func(opts ...udp.Option) (*client.Conn, error) {
			// The handshake runs here, bounded by RequestTimeout: left to
			// go-coap it starts lazily without a deadline, and a server
			// that drops a wrong PSK's handshake would hang the device.
			raddr, err := net.ResolveUDPAddr("udp", server)
			if err != nil {
				return nil, err
			}
			pc, err := net.DialUDP("udp", laddr, raddr)
			if err != nil {
				return nil, err
			}
			dc, err := piondtls.Client(dtlsnet.PacketConnFromConn(pc), raddr, dcfg)
			if err != nil {
				pc.Close()
				return nil, err
			}
			ctx, cancel := context.WithTimeout(d.ctx, d.cfg.RequestTimeout)
			defer cancel()
			if err := dc.HandshakeContext(ctx); err != nil {
				dc.Close()
				return nil, fmt.Errorf("DTLS handshake: %w", err)
			}
			return coapdtls.Client(dc, append(opts, options.WithCloseSocket())...), nil
		}
	}
	conn, err := dial(
		options.WithContext(d.ctx),
		options.WithMux(router),
		// Block-wise off: the device sends its Block2 options itself, to
		// count the blocks and resume at any of them.
		options.WithBlockwise(false, blockwise.SZX1024, blockwiseTransferTimeout),
		options.WithErrors(func(err error) { d.log.Debug("lwm2msim: coap", "err", err) }),
		requestMonitorOpt(func(_ *client.Conn, m *pool.Message) (bool, error) { return d.monitor(s, m) }),
		options.WithProcessReceivedMessageFunc(s.process),
		options.WithPeriodicRunner(d.runner),
	)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		_ = conn.Close()
		return nil, errStopped
	}
	s.conn = conn
	d.sess = s
	d.mu.Unlock()
	d.goTracked(s.run)
	if err := d.register(ctx, s); err != nil {
		d.mu.Lock()
		if d.sess == s {
			d.sess = nil
		}
		s.dead = true
		d.mu.Unlock()
		s.close()
		return nil, err
	}
	return s, nil
}

// objectLinks is the registration payload.
func (d *Device) objectLinks() string {
	links := []lwm2mcodec.Link{
		{Target: "/", Params: map[string]string{"rt": "oma.lwm2m", "ct": strconv.Itoa(int(lwm2mcodec.FormatLwM2MJSON))}},
	}
	for _, in := range d.instances() {
		links = append(links, lwm2mcodec.Link{Target: in.String()})
	}
	return lwm2mcodec.FormatLinks(links)
}

func (d *Device) binding() string {
	if d.cfg.Behaviour.QueueMode {
		return "UQ"
	}
	return "U"
}

// register sends the registration over s. On 2.01 the session becomes
// registered at the Location-Path. Observations the server makes as soon as
// it answered may arrive before the answer is processed: they are kept.
func (d *Device) register(ctx context.Context, s *session) error {
	rctx, cancel := d.reqCtx(ctx)
	defer cancel()
	req, err := s.conn.NewPostRequest(rctx, "/rd", message.AppLinkFormat, bytes.NewReader([]byte(d.objectLinks())))
	if err != nil {
		return err
	}
	defer s.conn.ReleaseMessage(req)
	req.AddQuery("ep=" + d.cfg.Endpoint)
	req.AddQuery("lt=" + strconv.FormatInt(int64(d.cfg.Lifetime/time.Second), 10))
	req.AddQuery("lwm2m=" + d.cfg.LwM2MVersion)
	req.AddQuery("b=" + d.binding())
	d.markUplink()
	resp, err := s.conn.Do(req)
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	defer s.conn.ReleaseMessage(resp)
	if resp.Code() != codes.Created {
		return &StatusError{Op: "register", Code: resp.Code()}
	}
	loc, err := resp.Options().LocationPath()
	if err != nil || loc == "" || loc == "/" {
		return fmt.Errorf("register: 2.01 without a Location-Path")
	}
	d.mu.Lock()
	defer d.unlock()
	if s.dead {
		return errStopped
	}
	s.loc = loc
	d.stats.Registrations++
	d.backoff = 0
	close(d.sessUp)
	d.sessUp = make(chan struct{})
	d.armUpdateLocked()
	if ev := d.fota.report; ev != nil { // the outcome of a reboot to install
		d.fota.report = nil
		d.event(*ev)
	}
	d.hookLocked("registered")
	return nil
}

// armUpdateLocked (re)arms the periodic registration update.
func (d *Device) armUpdateLocked() {
	if d.stopped {
		return
	}
	if d.updateTimer != nil {
		d.updateTimer.Stop()
	}
	d.updateTimer = d.clk.AfterFunc(d.cfg.Lifetime/2, func() {
		// The next one is armed now, in the clock's goroutine, so that the
		// period does not depend on how long the update takes.
		d.mu.Lock()
		d.armUpdateLocked()
		d.goTrackedLocked(func() {
			if err := d.update(d.ctx); err != nil {
				d.log.Info("lwm2msim: registration update", "err", err)
			}
		})
		d.mu.Unlock()
	})
}

var errNotRegistered = errors.New("lwm2msim: not registered (restarting)")

// update sends a registration update; on 4.04 (the server forgot the
// registration) the device registers again.
func (d *Device) update(ctx context.Context) error {
	d.mu.Lock()
	s := d.sess
	loc := ""
	if s != nil {
		loc = s.loc
	}
	d.mu.Unlock()
	if loc == "" {
		return errNotRegistered
	}
	rctx, cancel := d.reqCtx(ctx)
	defer cancel()
	req, err := s.conn.NewPostRequest(rctx, loc, message.TextPlain, nil)
	if err != nil {
		return err
	}
	defer s.conn.ReleaseMessage(req)
	d.markUplink()
	resp, err := s.conn.Do(req)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	defer s.conn.ReleaseMessage(resp)
	switch resp.Code() {
	case codes.Changed:
		d.mu.Lock()
		d.stats.Updates++
		d.hookLocked("update")
		d.mu.Unlock()
		return nil
	case codes.NotFound:
		d.log.Info("lwm2msim: registration unknown to the server, registering again")
		d.mu.Lock()
		s.observers = map[string]*observer{} // the server forgot them too
		d.mu.Unlock()
		return d.register(ctx, s)
	default:
		return &StatusError{Op: "update", Code: resp.Code()}
	}
}

// deregister sends DELETE of the registration.
func (d *Device) deregister(ctx context.Context, s *session) error {
	rctx, cancel := d.reqCtx(ctx)
	defer cancel()
	resp, err := s.conn.Delete(rctx, s.location())
	if err != nil {
		return err
	}
	defer s.conn.ReleaseMessage(resp)
	if resp.Code() != codes.Deleted {
		return &StatusError{Op: "deregister", Code: resp.Code()}
	}
	return nil
}

// waitSession returns the current registered session, waiting while the
// device restarts.
func (d *Device) waitSession(ctx context.Context) (*session, error) {
	for {
		d.mu.Lock()
		s, up := d.sess, d.sessUp
		ok := s != nil && s.loc != "" && !s.dead
		d.mu.Unlock()
		if ok {
			return s, nil
		}
		select {
		case <-up:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// restartLocked simulates a restart: the current session goes silent (no
// de-registration; it drops whatever it receives, and the answer to the
// request being handled is the last thing it sends), the observations end;
// after RestartDelay the device closes that socket and registers anew from
// a new one. d.mu is held.
func (d *Device) restartLocked(reason string) {
	if d.stopped {
		return
	}
	d.stats.Restarts++
	d.dropSessionLocked()
	d.log.Info("lwm2msim: restarting", "reason", reason, "for", d.cfg.Behaviour.RestartDelay)
	d.armRestartLocked()
}

// dropSessionLocked ends the current session, if any, for a restart or a
// lost connection: no registration updates, the PCP download paused until
// /19/0/0 is observed again, the observations and queued notifications
// gone; the session's socket is closed when the next one replaces it (the
// zombie). d.mu is held.
func (d *Device) dropSessionLocked() {
	s := d.sess
	d.sess = nil
	if d.updateTimer != nil {
		d.updateTimer.Stop()
	}
	d.pcpRestartLocked()
	if s == nil {
		return
	}
	s.dead = true
	s.observers = map[string]*observer{}
	s.queue = nil
	if d.zombie != nil {
		d.goTrackedLocked(d.zombie.close)
	}
	d.zombie = s
}

// lostLocked handles the close of a registered session's connection that
// the device did not ask for: go-coap closes a UDP connection whose socket
// reported an error, e.g. the ICMP port-unreachable that answers a message
// to a server that went away. The device is not rebooting: like a real
// client it keeps its state (a PCP download resumes once /19/0/0 is
// observed again) and registers again from a new socket, after
// RestartDelay and then with exponential backoff while that fails. d.mu is
// held.
func (d *Device) lostLocked(s *session) {
	if d.stopped || d.sess != s || s.dead {
		return
	}
	d.stats.Reconnects++
	d.dropSessionLocked()
	if d.backoff == 0 {
		d.backoff = 1
	}
	d.nextServerLocked() // the server went away: try another (the same one without fallbacks)
	d.log.Info("lwm2msim: connection lost, registering again", "in", d.restartDelayLocked())
	d.armRestartLocked()
}

// restartDelayLocked is the wait before the next registration attempt.
func (d *Device) restartDelayLocked() time.Duration {
	delay := d.cfg.Behaviour.RestartDelay
	for i := 1; i < d.backoff && delay < maxReconnectDelay; i++ {
		delay *= 2
	}
	return min(delay, maxReconnectDelay)
}

// armRestartLocked arms the reconnection after restartDelayLocked.
func (d *Device) armRestartLocked() {
	d.restartTimer = d.clk.AfterFunc(d.restartDelayLocked(), func() {
		d.goTracked(d.reconnect)
	})
	d.hookLocked("restarting")
}

// reconnect registers from a new socket after a restart or a lost
// connection, retrying with backoff until it succeeds or the device stops.
func (d *Device) reconnect() {
	d.mu.Lock()
	z := d.zombie
	d.zombie = nil
	d.mu.Unlock()
	if z != nil {
		z.close()
	}
	if _, err := d.connect(d.ctx); err != nil {
		if d.ctx.Err() != nil {
			return
		}
		d.mu.Lock()
		if !d.stopped {
			d.backoff++
			d.nextServerLocked()
			d.log.Info("lwm2msim: registration after restart failed, retrying", "err", err, "in", d.restartDelayLocked())
			d.armRestartLocked()
		}
		d.mu.Unlock()
		return
	}
	d.log.Info("lwm2msim: registered again after restart")
}

// packageID is the package ID of a Package URI path, as the server reads
// it (lwm2m.PackageRequest); the whole path when it is not a package's.
func packageID(p string) string {
	id, _, ok := lwm2m.PackageRequest(strings.TrimPrefix(p, "/"))
	if !ok {
		return p
	}
	return id
}
