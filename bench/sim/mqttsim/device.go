package mqttsim

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/transport/mqtt/iotda"
)

// Behaviour makes a device misbehave on purpose. The zero value is a device
// that upgrades successfully.
type Behaviour struct {
	// FailWith, if non-zero, is the result_code the device reports instead of upgrading
	// (after downloading when FailAfterDownload, else at once on the upgrade event).
	FailWith          int
	FailAfterDownload bool
	// DropAfterBytes > 0: during the first download, after this many bytes the device
	// drops its MQTT connection and the HTTP download, waits ReconnectDelay, reconnects and
	// resumes the download with a Range request from the byte it has.
	DropAfterBytes int64
	ReconnectDelay time.Duration // default 100ms
	// NeverAnswer: the device connects but answers nothing.
	NeverAnswer bool
	// CorruptDownload: flip a byte of the downloaded file, so the SHA-256 check fails (result_code 7).
	CorruptDownload bool
	// SkipProgress: report only the final result, no intermediate progress.
	SkipProgress bool
	// ThinkTime is how long, on Clock, the device thinks after a
	// firmware_upgrade or software_upgrade event before it acts on it:
	// before it reports progress 0 and starts downloading. A failure at
	// once (FailWith without FailAfterDownload) and the busy answer are not
	// delayed. Zero: no thinking.
	ThinkTime time.Duration
	// BytesPerSecond caps the download rate (0: unlimited): after each read
	// of the HTTP body (of at most one second's worth of bytes), while the
	// bytes read since the request started are ahead of start +
	// bytes/BytesPerSecond on Clock, the device waits before it reads on
	// (or, after the last, completes the download). A package of S bytes
	// takes about S/BytesPerSecond. Stop ends the wait.
	BytesPerSecond int64
}

// Config describes a simulated device.
type Config struct {
	Broker string // e.g. "tcp://127.0.0.1:1883"; also ssl://, tls://, mqtts://
	// Fallbacks are more brokers (the nodes of one cluster), tried in order
	// after Broker on each connection and reconnection (paho's server
	// list): a device whose broker went away connects to the next that
	// answers.
	Fallbacks []string
	DeviceID  string
	Secret    string // password = iotda.Password(secret, timestamp); client ID sign type 1
	FwVersion string // current versions; a successful upgrade replaces the one of its kind
	SwVersion string
	// KeepAlive defaults to 120s. IoTDA accepts 30s..1200s; it is not
	// checked here, so that a test can try a broker's refusal.
	KeepAlive time.Duration
	// Subscribe: subscribe to the down topic itself (external brokers);
	// default false: IoTDA-built devices rely on the platform's implicit
	// subscription.
	Subscribe bool
	// HTTPClient is used for the downloads; nil: http.DefaultClient, or,
	// with LocalAddr, a client with http.DefaultTransport's settings whose
	// connections bind to LocalAddr (shared by the devices of that address).
	// A given HTTPClient is used as is: LocalAddr does not apply to it.
	HTTPClient *http.Client
	// LocalAddr is the local IP address the device's connections bind to,
	// e.g. "127.0.0.2" (the port is the system's choice): the broker
	// connection (each reconnection too) and, unless HTTPClient is given,
	// the downloads; so that a simulator can spread many devices over
	// several local addresses. "": the system's choice.
	LocalAddr string
	// TLSConfig is used for ssl://, tls:// and mqtts:// brokers; nil: the
	// system roots, verifying the broker's host name.
	TLSConfig *tls.Config
	Behaviour Behaviour
	Clock     clock.Clock  // nil: clock.Real() — event_time, client ID timestamp, delays
	Logger    *slog.Logger // nil: discard
	// OnUpgrade, if set, is called after the device installed version v
	// (kind "firmware" or "software"), before it publishes its final report.
	OnUpgrade func(kind, v string)
	// OnEvent, if set, is told of the device's upgrade events (see [Event]
	// and the Event* constants), so that a simulator can measure without
	// polling. Calls come one at a time, in the order of the events, from
	// the device's goroutines, never with a lock of the device held:
	// OnEvent may call the Device's methods except Stop. It must not block:
	// the device waits for it.
	OnEvent func(Event)

	// handled, if set (tests), is called after the device dealt with a
	// publish on its down topic, with the event type ("" when it held none
	// or was malformed).
	handled func(eventType string)
	// waiting, if set (tests), is called once the timer of a ThinkTime
	// ("thinking") or BytesPerSecond ("paced") wait is armed.
	waiting func(what string)
}

// Stats counts what a device did.
type Stats struct {
	// VersionReports and ProgressReports count the version_report and
	// upgrade_progress_report events handed to the MQTT client (intermediate
	// and final reports alike, busy answers included).
	VersionReports, ProgressReports int
	// Downloads counts the downloads started (one per upgrade that gets to
	// downloading, however many HTTP requests it takes); Resumes the Range
	// requests that continued a broken one.
	Downloads, Resumes int
	// Upgrades counts the versions installed; Failures the upgrades that
	// ended with a non-zero result_code (not the busy answers to an event
	// that arrived while another upgrade ran).
	Upgrades, Failures int
	BytesDownloaded    int64
}

// Device is a running simulated device.
type Device struct {
	cfg    Config
	clk    clock.Clock
	log    *slog.Logger
	http   *http.Client
	client paho.Client
	up     string     // the up topic
	down   string     // the down topic
	local  net.IP     // Config.LocalAddr; nil: the system's choice
	ev     eventQueue // to Config.OnEvent

	ctx    context.Context // cancelled by Stop
	cancel context.CancelFunc
	inbox  chan []byte // publishes from the broker, for loop
	wg     sync.WaitGroup

	stopOnce sync.Once

	mu        sync.Mutex
	stopped   bool
	fw, sw    string
	stats     Stats
	running   *job          // the upgrade in progress
	dropped   bool          // the first download's drop has happened
	conn      *dropConn     // the current network connection
	gate      chan struct{} // non-nil: reconnections wait until it closes (ReconnectDelay)
	gateTimer clock.Timer   // the timer that closes gate
	connGen   int           // counts the connections up (after the subscription when Subscribe)
	connCh    chan struct{} // closed and replaced when connGen moves
	firstConn chan error    // the first connection's outcome, for Start
}

// inboxSize bounds the publishes waiting for the device's loop; more are
// dropped (and logged), as a busy device would.
const inboxSize = 64

const defaultReconnectDelay = 100 * time.Millisecond

// Start connects the device (it keeps reconnecting with paho's auto-reconnect
// while running) and answers events until Stop. It returns once the first
// connection is up (and, with Subscribe, subscribed), or the connection error
// (e.g. CONNACK refused): it does not retry the first connection. ctx bounds
// only that first connection; the device then runs until Stop.
func Start(ctx context.Context, cfg Config) (*Device, error) {
	if cfg.DeviceID == "" {
		return nil, errors.New("mqttsim: empty DeviceID")
	}
	if cfg.Broker == "" {
		return nil, errors.New("mqttsim: empty Broker")
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 120 * time.Second
	}
	if cfg.Behaviour.ReconnectDelay <= 0 {
		cfg.Behaviour.ReconnectDelay = defaultReconnectDelay
	}
	var local net.IP
	if cfg.LocalAddr != "" {
		if local = net.ParseIP(cfg.LocalAddr); local == nil {
			return nil, fmt.Errorf("mqttsim: LocalAddr %q: want an IP address", cfg.LocalAddr)
		}
	}
	d := &Device{
		cfg:    cfg,
		clk:    cfg.Clock,
		log:    cfg.Logger,
		http:   cfg.HTTPClient,
		up:     iotda.UpTopic(cfg.DeviceID),
		down:   iotda.DownTopic(cfg.DeviceID),
		inbox:  make(chan []byte, inboxSize),
		fw:     cfg.FwVersion,
		sw:     cfg.SwVersion,
		connCh: make(chan struct{}),
		local:  local,
		ev:     eventQueue{fn: cfg.OnEvent},
	}
	if d.clk == nil {
		d.clk = clock.Real()
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.log = d.log.With("device", cfg.DeviceID)
	switch {
	case d.http != nil: // the caller's, as is
	case local != nil:
		d.http = localHTTPClient(local)
	default:
		d.http = http.DefaultClient
	}
	d.ctx, d.cancel = context.WithCancel(context.WithoutCancel(ctx))
	first := make(chan error, 1)
	d.firstConn = first

	clientID, password := d.identity()
	opts := paho.NewClientOptions().
		AddBroker(cfg.Broker).
		SetClientID(clientID).
		SetUsername(cfg.DeviceID).
		SetPassword(password).
		SetProtocolVersion(4).
		SetKeepAlive(cfg.KeepAlive).
		SetCleanSession(true).
		SetResumeSubs(false).
		SetConnectRetry(false).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(10 * time.Second).
		SetConnectTimeout(30 * time.Second).
		SetTLSConfig(cfg.TLSConfig).
		SetDefaultPublishHandler(d.onMessage).
		SetOnConnectHandler(d.onConnect).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			d.log.Info("mqttsim: connection lost", "err", err)
		}).
		SetReconnectingHandler(d.onReconnecting).
		SetCustomOpenConnectionFn(d.openConnection).
		SetStore(copyStore{paho.NewMemoryStore()})
	for _, b := range cfg.Fallbacks {
		opts.AddBroker(b)
	}
	d.client = paho.NewClient(opts)

	tok := d.client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		d.cancel()    // a dial in progress gives up
		d.closeConn() // a CONNECT waiting for its CONNACK fails
		<-tok.Done()  // now prompt
		d.shutdown()  // disconnects if it got through anyway
		return nil, fmt.Errorf("mqttsim: device %s: connect to %s: %w", cfg.DeviceID, cfg.Broker, ctx.Err())
	}
	if err := tok.Error(); err != nil {
		d.shutdown()
		return nil, fmt.Errorf("mqttsim: device %s: connect to %s: %w", cfg.DeviceID, cfg.Broker, err)
	}
	var err error
	select {
	case err = <-first:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		d.shutdown()
		return nil, fmt.Errorf("mqttsim: device %s: %w", cfg.DeviceID, err)
	}
	d.goTracked(d.loop)
	d.log.Info("mqttsim: connected", "broker", cfg.Broker, "client_id", clientID)
	return d, nil
}

// identity is the client ID and password for a connection made now.
func (d *Device) identity() (clientID, password string) {
	c := iotda.NewClientID(d.cfg.DeviceID, d.clk.Now())
	return c.String(), iotda.Password(d.cfg.Secret, c.Timestamp)
}

// Stop disconnects the device and waits for its goroutines.
func (d *Device) Stop() { d.shutdown() }

func (d *Device) shutdown() {
	d.stopOnce.Do(func() {
		d.mu.Lock()
		d.stopped = true
		if d.gateTimer != nil {
			d.gateTimer.Stop()
		}
		d.mu.Unlock()
		d.cancel()
		if d.client.IsConnectionOpen() {
			d.client.Disconnect(100)
		} else {
			d.client.Disconnect(0) // ends a reconnection in progress
		}
		d.wg.Wait()
		d.log.Info("mqttsim: stopped")
	})
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

// ReportVersion publishes a version_report now (devices do this
// spontaneously after connecting), even with NeverAnswer. It returns once
// the broker acknowledged it.
func (d *Device) ReportVersion() error {
	if !d.enter() {
		return errors.New("mqttsim: device stopped")
	}
	defer d.wg.Done()
	return d.reportVersion()
}

func (d *Device) reportVersion() error {
	d.mu.Lock()
	fw, sw := d.fw, d.sw
	d.stats.VersionReports++
	d.mu.Unlock()
	var fwp, swp *string
	if fw != "" || sw == "" {
		fwp = &fw
	}
	if sw != "" || fw == "" {
		swp = &sw
	}
	return d.publish(iotda.EncodeVersionReport(d.cfg.DeviceID, fwp, swp, d.clk.Now()))
}

// publish sends an event on the up topic with QoS 1 and waits for its
// acknowledgement (or Stop).
func (d *Device) publish(payload []byte) error {
	tok := d.client.Publish(d.up, 1, false, payload)
	select {
	case <-tok.Done():
		return tok.Error()
	case <-d.ctx.Done():
		return d.ctx.Err()
	}
}

// Connection management.

// onReconnecting runs in paho's reconnection goroutine before each attempt,
// before paho builds the CONNECT packet from o. It waits while a simulated
// drop holds the device offline, then sets the client ID and password for
// now: a new hour needs new ones.
func (d *Device) onReconnecting(_ paho.Client, o *paho.ClientOptions) {
	d.mu.Lock()
	gate := d.gate
	d.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-d.ctx.Done(): // openConnection fails the attempt
		}
	}
	o.ClientID, o.Password = d.identity()
}

// openConnection dials the broker for paho.
func (d *Device) openConnection(u *url.URL, o paho.ClientOptions) (net.Conn, error) {
	if err := d.ctx.Err(); err != nil {
		return nil, err
	}
	dialer := &net.Dialer{Timeout: o.ConnectTimeout}
	if d.local != nil {
		dialer.LocalAddr = &net.TCPAddr{IP: d.local}
	}
	var conn net.Conn
	var err error
	switch strings.ToLower(u.Scheme) {
	case "tcp", "mqtt", "":
		conn, err = dialer.DialContext(d.ctx, "tcp", u.Host)
	case "ssl", "tls", "mqtts", "tcps":
		cfg := &tls.Config{}
		if o.TLSConfig != nil {
			cfg = o.TLSConfig.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		conn, err = (&tls.Dialer{NetDialer: dialer, Config: cfg}).DialContext(d.ctx, "tcp", u.Host)
	default:
		return nil, fmt.Errorf("mqttsim: unsupported broker scheme %q (tcp, mqtt, ssl, tls, mqtts)", u.Scheme)
	}
	if err != nil {
		return nil, err
	}
	dc := &dropConn{Conn: conn}
	d.mu.Lock()
	d.conn = dc
	d.mu.Unlock()
	if err := d.ctx.Err(); err != nil { // Start gave up meanwhile
		_ = conn.Close()
		return nil, err
	}
	return dc, nil
}

// copyStore is paho's memory store, except that it keeps a copy of each
// PUBLISH packet it is given. After a reconnection paho's resume marks the
// stored PUBLISH packets DUP and sends them again; without the copy it would
// set the flag on the packet that the connection's writer may be sending at
// that moment: one the device published right after the reconnection, a
// data race (eclipse-paho/paho.mqtt.golang#703). Publish stores a packet
// before it hands it to the writer, so the copy is taken before the writer
// touches it; resume then flags and resends the copy, as it would have the
// packet.
type copyStore struct{ *paho.MemoryStore }

func (s copyStore) Put(key string, m packets.ControlPacket) {
	if p, ok := m.(*packets.PublishPacket); ok {
		c := *p
		m = &c
	}
	s.MemoryStore.Put(key, m)
}

// closeConn closes the current network connection, abruptly (no
// DISCONNECT): paho sees a lost connection.
func (d *Device) closeConn() {
	d.mu.Lock()
	c := d.conn
	d.conn = nil
	d.mu.Unlock()
	if c != nil {
		c.drop()
	}
}

// errDropped is what reads and writes of a dropped connection return. Paho
// takes "use of closed network connection" for its own doing and would not
// notice the loss (nor reconnect) until a write or a ping failed.
var errDropped = errors.New("mqttsim: connection dropped (simulated)")

// dropConn is a network connection that the device can drop.
type dropConn struct {
	net.Conn
	dropped atomic.Bool
}

func (c *dropConn) drop() {
	c.dropped.Store(true)
	_ = c.Conn.Close()
}

func (c *dropConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil && c.dropped.Load() {
		err = errDropped
	}
	return n, err
}

func (c *dropConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil && c.dropped.Load() {
		err = errDropped
	}
	return n, err
}

// drop cuts the MQTT connection and keeps the device offline for
// ReconnectDelay. It returns the connection count before the drop.
func (d *Device) drop() int {
	gate := make(chan struct{})
	d.mu.Lock()
	gen := d.connGen
	d.gate = gate
	d.gateTimer = d.clk.AfterFunc(d.cfg.Behaviour.ReconnectDelay, func() {
		d.mu.Lock()
		if d.gate == gate {
			d.gate = nil
		}
		d.mu.Unlock()
		close(gate)
	})
	d.mu.Unlock()
	d.log.Info("mqttsim: dropping the connection", "for", d.cfg.Behaviour.ReconnectDelay)
	d.closeConn()
	return gen
}

// waitConnected waits until a connection after the gen-th one is up.
func (d *Device) waitConnected(gen int) error {
	for {
		d.mu.Lock()
		now, ch := d.connGen, d.connCh
		d.mu.Unlock()
		if now > gen {
			return nil
		}
		select {
		case <-ch:
		case <-d.ctx.Done():
			return d.ctx.Err()
		}
	}
}

// onConnect runs (in its own goroutine, from paho) after each CONNACK.
func (d *Device) onConnect(c paho.Client) {
	if !d.enter() {
		return
	}
	defer d.wg.Done()
	var err error
	if d.cfg.Subscribe {
		err = d.subscribe(c)
		if err != nil {
			d.log.Warn("mqttsim: subscribe", "topic", d.down, "err", err)
		}
	}
	d.mu.Lock()
	d.connGen++
	close(d.connCh)
	d.connCh = make(chan struct{})
	first := d.firstConn
	d.firstConn = nil
	d.mu.Unlock()
	if first != nil {
		first <- err
	}
}

func (d *Device) subscribe(c paho.Client) error {
	tok := c.Subscribe(d.down, 1, nil) // nil: the default handler
	select {
	case <-tok.Done():
	case <-d.ctx.Done():
		return d.ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return err
	}
	if st, ok := tok.(*paho.SubscribeToken); ok {
		if qos, ok := st.Result()[d.down]; ok && qos > 2 {
			return fmt.Errorf("subscription to %s refused (SUBACK 0x%02x)", d.down, qos)
		}
	}
	return nil
}

// onMessage is paho's handler for every publish the device receives. It
// must not block: the device's loop does the work.
func (d *Device) onMessage(_ paho.Client, m paho.Message) {
	if m.Topic() != d.down {
		d.log.Debug("mqttsim: publish on another topic ignored", "topic", m.Topic())
		d.handledHook("")
		return
	}
	p := append([]byte(nil), m.Payload()...)
	select {
	case d.inbox <- p:
	default:
		d.log.Warn("mqttsim: inbox full, publish dropped", "bytes", len(p))
		d.handledHook("")
	}
}

func (d *Device) handledHook(eventType string) {
	if d.cfg.handled != nil {
		d.cfg.handled(eventType)
	}
}

// loop handles the publishes on the down topic until Stop.
func (d *Device) loop() {
	for {
		select {
		case <-d.ctx.Done():
			return
		case p := <-d.inbox:
			ev := d.handle(p)
			d.handledHook(ev)
		}
	}
}

// handle deals with one publish on the down topic and returns its event
// type ("" when it held no $ota event or was malformed). It never panics on
// the broker's input.
func (d *Device) handle(payload []byte) string {
	dl, ok, err := iotda.DecodeDownlink(payload)
	if err != nil {
		d.log.Warn("mqttsim: malformed publish ignored", "err", err)
		return ""
	}
	if !ok {
		d.log.Debug("mqttsim: publish without an $ota event ignored")
		return ""
	}
	if dl.ObjectDeviceID != "" && dl.ObjectDeviceID != d.cfg.DeviceID {
		d.log.Warn("mqttsim: event for another device ignored (no gateway mode)", "object_device_id", dl.ObjectDeviceID)
		return dl.EventType
	}
	var j *job // an upgrade event's
	if (dl.EventType == iotda.EventFirmwareUpgrade || dl.EventType == iotda.EventSoftwareUpgrade) && dl.Upgrade != nil {
		j = &job{software: dl.EventType == iotda.EventSoftwareUpgrade, p: *dl.Upgrade}
		d.event(EventCommand, j, 0, 0)
	}
	if d.cfg.Behaviour.NeverAnswer {
		d.log.Debug("mqttsim: event ignored (NeverAnswer)", "event", dl.EventType)
		return dl.EventType
	}
	switch dl.EventType {
	case iotda.EventVersionQuery:
		if err := d.reportVersion(); err != nil {
			d.log.Warn("mqttsim: version_report", "err", err)
		}
	case iotda.EventFirmwareUpgrade, iotda.EventSoftwareUpgrade:
		if j != nil {
			d.startUpgrade(j)
		}
	default:
		d.log.Debug("mqttsim: $ota event not handled", "event", dl.EventType)
	}
	return dl.EventType
}
