package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/mqtt/iotda"
)

// Credentials looks up a device's secret; persistence.Registry satisfies it.
type Credentials interface {
	DeviceCredentials(ctx context.Context, id string) (persistence.Credentials, error)
}

// Downloads mints what an upgrade event carries to download the package: the
// URL and a bearer token bound to the job, and when the token expires.
type Downloads interface {
	Mint(taskID, deviceID string, attempt uint32, packageID string) (url, token string, expires time.Time)
}

// BrokerConfig configures the embedded broker.
type BrokerConfig struct {
	// Addr is the plain MQTT listener ("127.0.0.1:1883"; port 0 picks one).
	Addr string
	// TLSAddr and TLS, when both set, add an MQTTS listener (8883).
	TLSAddr string
	TLS     *tls.Config
	// Credentials checks device logins; Uplinks receives presence and
	// reports; Downloads fills upgrade events. All required.
	Credentials Credentials
	Uplinks     transport.Uplinks
	Downloads   Downloads
	// Presence, when set, counts the devices with a connection (the
	// fleet summary): Up at a device's first connection, Down when its
	// last one ends.
	Presence *transport.Presence
	// TimestampSkew is how far a sign-type-1 client ID's hour may be from
	// the clock; 0 means one hour.
	TimestampSkew time.Duration
	// RequireTimestamp refuses sign type 0 client IDs (no timestamp check,
	// so a captured password works forever) as malformed ones (0x02).
	RequireTimestamp bool

	// ConnectTimeout bounds the time from accept to a complete CONNECT; 0
	// means DefaultConnectTimeout. A first packet that is not a CONNECT of
	// at most MaxConnectSize bytes closes the connection.
	ConnectTimeout time.Duration
	// MaxConnections and MaxConnectionsPerSource bound the open connections
	// of all listeners together, and of one source address: a connection
	// beyond them is closed at once. 0 means DefaultMaxConnections and
	// DefaultMaxConnectionsPerSource; negative, no limit.
	MaxConnections          int
	MaxConnectionsPerSource int
	// LoginFailuresPerDevice and LoginFailuresPerSource are the failed
	// logins (wrong password, timestamp or user name, unknown device)
	// allowed at once before further logins of that device, or from that
	// address, are refused unchecked (0x05); the allowance refills over
	// LoginFailureWindow. 0 means the defaults; negative, no throttle.
	LoginFailuresPerDevice int
	LoginFailuresPerSource int
	// UplinkRate (publishes a second) and UplinkBurst are each connected
	// device's token bucket for publishes on its up topic; a publish beyond
	// it is neither acknowledged nor handed to the engine. 0 means
	// DefaultUplinkRate and DefaultUplinkBurst; a negative rate, no limit.
	UplinkRate  float64
	UplinkBurst int

	Metrics prometheus.Registerer // nil: a private registry
	Clock   clock.Clock           // nil: clock.Real()
	Logger  *slog.Logger          // nil: discard
}

// Defaults of the per-device uplink bucket: IoTDA allows a device 50
// messages a second; an OTA device sends a handful per upgrade.
const (
	DefaultUplinkRate  = 5
	DefaultUplinkBurst = 20
)

// withDefaults fills the zero fields of c.
func (c BrokerConfig) withDefaults() BrokerConfig {
	if c.Clock == nil {
		c.Clock = clock.Real()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.TimestampSkew == 0 {
		c.TimestampSkew = time.Hour
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.MaxConnectionsPerSource == 0 {
		c.MaxConnectionsPerSource = DefaultMaxConnectionsPerSource
	}
	if c.LoginFailuresPerDevice == 0 {
		c.LoginFailuresPerDevice = DefaultLoginFailuresPerDevice
	}
	if c.LoginFailuresPerSource == 0 {
		c.LoginFailuresPerSource = DefaultLoginFailuresPerSource
	}
	if c.UplinkRate == 0 {
		c.UplinkRate = DefaultUplinkRate
	}
	if c.UplinkBurst <= 0 {
		c.UplinkBurst = DefaultUplinkBurst
	}
	return c
}

// Broker is the embedded MQTT broker (mochi-mqtt) with IoTDA device login,
// a per-device topic ACL, implicit subscription to the down topic, presence,
// and uplinks taken in process. It implements transport.Downlinks.
type Broker struct {
	cfg      BrokerConfig
	server   *mqtt.Server
	hook     *hook
	log      *slog.Logger
	mochiLog *slog.Logger // mochi's, and the front end's lines about connections
	refusals *limitedLog  // lines about refused devices, at a bounded rate
	metrics  *brokerMetrics
	throttle *loginThrottle
	limits   *connLimits
	addrs    map[string]string
	lis      map[string]net.Listener
	workers  *workers
	wg       sync.WaitGroup // accept loops and connections

	mu       sync.Mutex
	sessions map[string]*session // device ID → its connections
	conns    map[*conn]struct{}  // every open connection, logged in or not
	closing  bool

	startOnce sync.Once
	closeOnce sync.Once
	closeErr  error
}

// session is what the broker keeps of a connected device.
type session struct {
	conns   []*conn       // its connections, usually one
	uplinks *rate.Limiter // nil: no limit
}

var _ transport.Downlinks = (*Broker)(nil)

// NewBroker builds the broker and opens its listeners; Start serves them.
func NewBroker(cfg BrokerConfig) (*Broker, error) {
	if cfg.Credentials == nil || cfg.Uplinks == nil || cfg.Downloads == nil {
		return nil, errors.New("mqtt: BrokerConfig needs Credentials, Uplinks and Downloads")
	}
	cfg = cfg.withDefaults()
	m, err := newBrokerMetrics(cfg.Metrics)
	if err != nil {
		return nil, fmt.Errorf("mqtt: registering metrics: %w", err)
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumQos = 1         // spec 2.1: no QoS 2
	caps.RetainAvailable = 0    // no retained messages
	caps.SharedSubAvailable = 0 // devices subscribe only to their own topic
	caps.WildcardSubAvailable = 0
	caps.MaximumPacketSize = iotda.MaxPayload + 64<<10
	caps.MaximumSessionExpiryInterval = 0 // sessions end with the connection
	caps.MaximumClients = math.MaxInt64   // limitListener bounds connections, before they cost anything
	caps.MaximumClientWritesPending = maxWritesPending
	b := &Broker{
		cfg:      cfg,
		log:      cfg.Logger,
		mochiLog: cfg.Logger.With("component", "mqtt-broker"),
		refusals: newLimitedLog(cfg.Logger, cfg.Clock),
		metrics:  m,
		throttle: newLoginThrottle(cfg.LoginFailuresPerDevice, cfg.LoginFailuresPerSource),
		limits:   &connLimits{max: cfg.MaxConnections, perSource: cfg.MaxConnectionsPerSource, bySource: map[netip.Addr]int{}},
		addrs:    map[string]string{},
		lis:      map[string]net.Listener{},
		sessions: map[string]*session{},
		conns:    map[*conn]struct{}{},
	}
	b.hook = &hook{b: b}
	b.workers = newWorkers(b.work)
	b.server = mqtt.New(&mqtt.Options{
		Capabilities: caps,
		Logger:       b.mochiLog,
	})
	if err := b.server.AddHook(b.hook, nil); err != nil {
		return nil, err
	}
	add := func(id, addr string, tc *tls.Config) error {
		lis, err := b.listen(addr, tc)
		if err != nil {
			return fmt.Errorf("mqtt: listening on %s: %w", addr, err)
		}
		b.lis[id] = lis
		b.addrs[id] = lis.Addr().String()
		return nil
	}
	closeAll := func() {
		for _, l := range b.lis {
			l.Close()
		}
	}
	if cfg.Addr != "" {
		if err := add("mqtt", cfg.Addr, nil); err != nil {
			closeAll()
			return nil, err
		}
	}
	if cfg.TLSAddr != "" && cfg.TLS != nil {
		if err := add("mqtts", cfg.TLSAddr, cfg.TLS); err != nil {
			closeAll()
			return nil, err
		}
	}
	return b, nil
}

// listen opens a listener that bounds what a connection costs before its
// login: the connection limits on the raw sockets, then TLS, then the
// CONNECT deadline and size on the (decrypted) first packet.
func (b *Broker) listen(addr string, tc *tls.Config) (net.Listener, error) {
	raw, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	var lis net.Listener = &limitListener{Listener: raw, limits: b.limits, refused: b.connectionRefused,
		failed: func(err error) { b.refusals.Info("mqtt: accepting a connection; retrying", "error", err) }}
	if tc != nil {
		lis = tls.NewListener(lis, tc)
	}
	return &loginListener{Listener: lis, timeout: b.cfg.ConnectTimeout, maxFirst: MaxConnectSize, refused: b.connectionRefused}, nil
}

// connectionRefused counts and logs a connection closed before its login.
func (b *Broker) connectionRefused(reason string, remote net.Addr) {
	b.metrics.connections.WithLabelValues(reason).Inc()
	b.refusals.Info("mqtt: connection closed before login", "reason", reason, "remote", remote.String())
}

// Addr returns the address a listener ("mqtt" or "mqtts") is bound to; "" if
// it has none.
func (b *Broker) Addr(listener string) string { return b.addrs[listener] }

// Start serves the listeners in the background (the front end, front.go).
//
// mochi's Server.Serve is not called: it would start mochi's event loop,
// whose tickers walk every client in mochi's index once a second (expired
// sessions, expired inflight messages), the retained messages and the
// delayed wills, and publish the $SYS topics (after a stop-the-world
// runtime.ReadMemStats). None of it has work here: the front end keeps its
// connections out of mochi's index (sessions end with their connection, and
// a connection's inflight downlinks with it: end), retained messages and
// wills are refused, and the ACL admits no $SYS topic. So an idle device
// costs no periodic work: nothing walks the devices on a timer
// (TestIdleDevicesNotWalked).
func (b *Broker) Start() error {
	b.startOnce.Do(func() {
		for id, lis := range b.lis {
			b.wg.Add(1)
			go b.accept(id, lis)
		}
	})
	return nil
}

// Close closes the listeners, disconnects every device (DISCONNECT, server
// shutting down), waits for the connections' ends and stops the broker; a
// second Close does nothing.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.mu.Lock()
		b.closing = true
		var in, out []*conn
		for c := range b.conns {
			if c.loggedIn {
				in = append(in, c)
			} else {
				out = append(out, c)
			}
		}
		b.mu.Unlock()
		for _, l := range b.lis {
			_ = l.Close()
		}
		for _, c := range in {
			_ = b.server.DisconnectClient(c.cl, packets.ErrServerShuttingDown)
		}
		for _, c := range out {
			c.cl.Stop(packets.ErrServerShuttingDown)
		}
		b.wg.Wait()
		b.workers.stop()
		b.closeErr = b.server.Close()
	})
	return b.closeErr
}

// Send publishes a downlink on the device's down topic (QoS 1) to each of
// its connections (publishDown). A device that is not connected misses it;
// the device machine's deadlines cover that.
func (b *Broker) Send(ctx context.Context, dl *messages.Downlink) error {
	now := b.cfg.Clock.Now()
	payload, offer, err := encodeDownlink(dl, b.cfg.Downloads, now)
	if err != nil {
		return err
	}
	b.publishDown(dl.GetDeviceId(), payload, now)
	if offer != nil {
		b.deliver(dl.GetDeviceId(), offer)
	}
	return nil
}

// RevokeToken: tokens are checked against the device's running job on every
// download request, so a finished or stopped job's token is refused already;
// nothing to do here.
func (b *Broker) RevokeToken(ctx context.Context, r *messages.RevokeToken) error { return nil }

// encodeDownlink is the JSON event of an MQTT downlink. For an upgrade event
// it also returns the DownloadOffered to deliver once the event is sent: the
// URL and the access token the device was given, for its timeline.
func encodeDownlink(dl *messages.Downlink, d Downloads, now time.Time) ([]byte, *messages.DeviceInput, error) {
	id := dl.GetDeviceId()
	switch k := dl.GetKind().(type) {
	case *messages.Downlink_MqttVersionQuery:
		return iotda.EncodeVersionQuery(id, now), nil, nil
	case *messages.Downlink_MqttUpgrade:
		job := k.MqttUpgrade.GetJob()
		pkg := job.GetPackage()
		url, token, expires := d.Mint(job.GetTaskId(), id, job.GetAttempt(), pkg.GetPackageId())
		p := iotda.UpgradeParas{
			Version: pkg.GetVersion(), URL: url, FileSize: pkg.GetSize(), FileName: pkg.GetFileName(),
			AccessToken: token, Expires: int64(expires.Sub(now).Round(time.Second) / time.Second), CustomInfo: pkg.GetCustomInfo(),
		}
		if !pkg.GetOmitSign() {
			p.Sign = pkg.GetSha256()
		}
		offer := &messages.DeviceInput{Kind: &messages.DeviceInput_DownloadOffered{DownloadOffered: &messages.DownloadOffered{
			TaskId: job.GetTaskId(), Attempt: job.GetAttempt(), Uri: url, Token: token,
		}}}
		return iotda.EncodeUpgrade(id, job.GetTaskType() == messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE, p, now), offer, nil
	}
	return nil, nil, fmt.Errorf("mqtt: downlink %T is not an MQTT one (device %s)", dl.GetKind(), id)
}

// deliver hands one input to the engine, logging a failure (the engine is
// closing, or the device ID is invalid).
func (b *Broker) deliver(id string, in *messages.DeviceInput) {
	if err := b.cfg.Uplinks.Deliver(context.Background(), id, in); err != nil {
		b.log.Warn("mqtt: delivering to the engine", "device", id, "error", err)
	}
}

// deliverWait bounds how long an uplink waits for the engine to journal it
// before it goes unacknowledged (the device then publishes it again).
const deliverWait = 30 * time.Second

// deliverReport hands one input of a publish to the engine and waits until it
// is journaled (Uplinks.Deliver). mochi sends the PUBACK after OnPublish
// returns, and none when OnPublish rejects the packet: so a PUBACK is sent
// only for what the engine has made durable.
func (b *Broker) deliverReport(id string, in *messages.DeviceInput) error {
	ctx, cancel := context.WithTimeout(context.Background(), deliverWait)
	defer cancel()
	return b.cfg.Uplinks.Deliver(ctx, id, in)
}

// hook is the broker's mochi hook: the ACL and uplinks, which mochi calls as
// it processes a packet (Server.InjectPacket), and the login, which the
// front end calls (login).
type hook struct {
	mqtt.HookBase
	b *Broker
}

func (h *hook) ID() string { return "otafleet" }

func (h *hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnACLCheck, mqtt.OnPublish:
		return true
	}
	return false
}

// refusal is why a login is refused: the CONNACK code (MQTT 5; see
// connackCode for 3.1.1), the metric's reason and a log text.
type refusal struct {
	code   packets.Code
	reason string
	why    string
}

// checkConnect decides what can be decided of a login from the CONNECT
// alone, in IoTDA's order (spec 2.1): a will message is refused (0x05: IoTDA
// devices never set one, and mochi would publish it unchecked by the ACL);
// a malformed client ID, sign type 0 when requireTimestamp is set, or a
// keep-alive outside 30–1200 s gets 0x02; a user name other than the
// client ID's device, or a sign-type-1 timestamp too far from now, gets
// 0x04. The device's password is checked afterwards (OnConnect).
func checkConnect(pk packets.Packet, now time.Time, skew time.Duration, requireTimestamp bool) (iotda.ClientID, *refusal) {
	if pk.Connect.WillFlag {
		return iotda.ClientID{}, &refusal{packets.ErrNotAuthorized, loginWill, "a will message (not supported)"}
	}
	c, err := iotda.ParseClientID(pk.Connect.ClientIdentifier)
	if err != nil {
		return c, &refusal{packets.ErrClientIdentifierNotValid, loginClientID, err.Error()}
	}
	if requireTimestamp && c.SignType != iotda.SignTimestampCheck {
		return c, &refusal{packets.ErrClientIdentifierNotValid, loginSignType, "sign type 0 (no timestamp check) is refused"}
	}
	if ka := pk.Connect.Keepalive; ka < iotda.MinKeepAlive || ka > iotda.MaxKeepAlive {
		return c, &refusal{packets.ErrClientIdentifierNotValid, loginKeepAlive, fmt.Sprintf("keep-alive %d s out of range", ka)}
	}
	if string(pk.Connect.Username) != c.DeviceID {
		return c, &refusal{packets.ErrBadUsernameOrPassword, loginUsername, "username is not the client ID's device ID"}
	}
	if err := iotda.CheckTimestamp(c, now, skew); err != nil {
		return c, &refusal{packets.ErrBadUsernameOrPassword, loginTimestamp, err.Error()}
	}
	return c, nil
}

// connackCode is the CONNACK code of a refusal for a client of protocol
// version v: MQTT 3.1.1 has 0x02 (identifier rejected), 0x04 (bad user name
// or password) and 0x05 (not authorized) where MQTT 5 has 0x85, 0x86, 0x87.
// (mochi's own mapping would answer 0x05 to a bad password.)
func connackCode(code packets.Code, v byte) packets.Code {
	if v >= 5 {
		return code
	}
	switch code {
	case packets.ErrBadUsernameOrPassword:
		return packets.ErrMalformedUsernameOrPassword // 0x04
	case packets.ErrNotAuthorized:
		return packets.Err3NotAuthorized // 0x05
	case packets.ErrClientIdentifierNotValid:
		return packets.Err3ClientIdentifierNotValid // 0x02
	}
	return code
}

// OnConnect logs a device in (checkConnect, then its password), answering
// refusals with IoTDA's CONNACK codes. A login refused for its credentials
// (user name, timestamp, unknown device, password) counts against its
// source address, and against the device when it exists; once either has
// used up its allowance (loginThrottle), logins are refused with 0x05
// before the password is checked.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	_, err := h.logIn(cl, pk)
	return err
}

// logIn is OnConnect, returning the product of the device logged in.
func (h *hook) logIn(cl *mqtt.Client, pk packets.Packet) (product string, err error) {
	src := sourceOf(cl.Net.Conn.RemoteAddr())
	now := h.b.cfg.Clock.Now()
	refuse := func(r *refusal, device string) error {
		h.b.metrics.logins.WithLabelValues(r.reason).Inc()
		h.b.refusals.Info("mqtt: connection refused", "client_id", clip(pk.Connect.ClientIdentifier), "device", clip(device),
			"remote", src.String(), "reason", r.why)
		code := connackCode(r.code, cl.Properties.ProtocolVersion)
		if err := h.b.server.SendConnack(cl, code, false, nil); err != nil {
			return err
		}
		return code
	}
	c, r := checkConnect(pk, now, h.b.cfg.TimestampSkew, h.b.cfg.RequireTimestamp)
	if r != nil && r.code != packets.ErrBadUsernameOrPassword {
		return "", refuse(r, c.DeviceID)
	}
	if h.b.throttle.blocked(c.DeviceID, src, now) {
		return "", refuse(&refusal{packets.ErrNotAuthorized, loginThrottled, "too many failed logins of the device or from its address"}, c.DeviceID)
	}
	fail := func(r *refusal, known bool) error {
		device := ""
		if known {
			device = c.DeviceID
		}
		h.b.throttle.failed(device, src, now)
		return refuse(r, c.DeviceID)
	}
	creds, err := h.b.cfg.Credentials.DeviceCredentials(context.Background(), c.DeviceID)
	known := err == nil
	switch {
	case r != nil:
		return "", fail(r, known)
	case !known:
		return "", fail(&refusal{packets.ErrBadUsernameOrPassword, loginUnknown, fmt.Sprintf("device: %v", err)}, false)
	case creds.Secret == "":
		return "", fail(&refusal{packets.ErrBadUsernameOrPassword, loginNoSecret, "the device has no secret"}, true)
	case !iotda.CheckPassword(creds.Secret, c.Timestamp, pk.Connect.Password):
		return "", fail(&refusal{packets.ErrBadUsernameOrPassword, loginPassword, "wrong password"}, true)
	}
	return creds.ProductID, nil
}

// deviceOf is the device ID a connection logged in as (its username, checked
// at login).
func deviceOf(cl *mqtt.Client) string { return string(cl.Properties.Username) }

// ownTopic reports whether device may publish or subscribe on topic: only
// its own $oc/devices/{device_id}/ topics.
func ownTopic(device, topic string) bool {
	id, _, ok := iotda.ParseTopic(topic)
	return ok && id == device
}

// OnACLCheck applies ownTopic.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	allowed := ownTopic(deviceOf(cl), topic)
	if !allowed {
		h.b.refusals.Info("mqtt: topic refused", "device", deviceOf(cl), "topic", clip(topic), "publish", write)
	}
	return allowed
}

// established adds the connection to its device's session, where
// Send finds it: so the device gets its down topic without a SUBSCRIBE
// (devices built for IoTDA never send one), as if subscribed, and without a
// subscription in mochi's topic index (a few particles a device, walked on
// every publish). It reports the device online.
//
// A connection with the client ID of an existing one replaces it (MQTT's
// session takeover, login). IoTDA allows one connection per device (spec 2.9);
// otafleet accepts several with different client IDs (the sign type 0 and 1
// forms, or another hour), so that a debugging client such as mosquitto_sub
// can listen beside the device: each gets the downlinks, and the device is
// online while any of them is connected. They share the device's uplink
// bucket.
func (b *Broker) established(c *conn) {
	id := c.device
	b.mu.Lock()
	s := b.sessions[id]
	if s == nil {
		s = &session{}
		if b.cfg.UplinkRate > 0 {
			s.uplinks = rate.NewLimiter(rate.Limit(b.cfg.UplinkRate), b.cfg.UplinkBurst)
		}
		b.sessions[id] = s
	}
	s.conns = append(s.conns, c)
	b.cfg.Presence.Up(transport.ViaMQTT, id, c.product)
	b.mu.Unlock()
	b.deliver(id, &messages.DeviceInput{Kind: &messages.DeviceInput_Connected{Connected: &messages.Connected{}}})
}

// ended reports the device offline when its last connection has ended.
func (b *Broker) ended(c *conn) {
	id := c.device
	b.mu.Lock()
	s := b.sessions[id]
	i := -1
	if s != nil {
		i = slices.Index(s.conns, c)
	}
	if i < 0 {
		b.mu.Unlock()
		return // refused at login, or already counted
	}
	s.conns = slices.Delete(s.conns, i, i+1)
	last := len(s.conns) == 0
	if last {
		delete(b.sessions, id)
		b.cfg.Presence.Down(transport.ViaMQTT, id)
	}
	b.mu.Unlock()
	if last {
		b.deliver(id, &messages.DeviceInput{Kind: &messages.DeviceInput_Disconnected{Disconnected: &messages.Disconnected{}}})
	}
}

// allowUplink takes a token from the device's uplink bucket.
func (b *Broker) allowUplink(id string) bool {
	b.mu.Lock()
	s := b.sessions[id]
	b.mu.Unlock()
	return s == nil || s.uplinks == nil || s.uplinks.AllowN(b.cfg.Clock.Now(), 1)
}

// OnPublish takes a device's uplink in process (no subscriber queue that
// could drop it), decodes it and hands it to the engine, which journals it
// before the broker acknowledges it: when the engine cannot (its journal
// failed, it is stopping), the publish is rejected and gets no PUBACK.
// Uplinks go to no other subscriber, and none is retained. A publish beyond
// the device's uplink bucket is rejected too: mochi then neither acknowledges
// nor forwards it, so the device sends it again later. A malformed one (or
// one of too many services) is acknowledged and dropped: sending it again
// would not help.
//
// The front end hands a publish on the device's up topic to uplink itself
// (Broker.uplink); mochi calls OnPublish for the others, which are ignored.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	id := deviceOf(cl)
	if !iotda.IsUpTopic(pk.TopicName, id) {
		h.b.log.Debug("mqtt: publish on another topic ignored", "device", id, "topic", pk.TopicName)
		return pk, packets.CodeSuccessIgnore
	}
	if err := h.uplink(id, pk); err != nil {
		return pk, err
	}
	return pk, packets.CodeSuccessIgnore
}

// uplink takes a publish of device id on its up topic (OnPublish): it
// returns nil when the publish is to be acknowledged, packets.ErrRejectPacket
// when not.
func (h *hook) uplink(id string, pk packets.Packet) error {
	if !h.b.allowUplink(id) {
		h.b.metrics.uplinks.WithLabelValues(uplinkRateLimited).Inc()
		h.b.refusals.Info("mqtt: uplink refused, not acknowledged: the device publishes too fast", "device", id,
			"rate", h.b.cfg.UplinkRate, "burst", h.b.cfg.UplinkBurst)
		return packets.ErrRejectPacket
	}
	up, err := iotda.DecodeUplink(id, pk.Payload)
	if err != nil {
		reason := uplinkMalformed
		if errors.Is(err, iotda.ErrTooManyServices) {
			reason = uplinkTooManyServices
		}
		h.b.metrics.uplinks.WithLabelValues(reason).Inc()
		h.b.refusals.Info("mqtt: malformed uplink ignored", "device", id, "error", clip(err.Error()), "bytes", len(pk.Payload))
		return nil
	}
	for _, ig := range up.Ignored {
		h.b.log.Debug("mqtt: uplink event ignored", "device", id, "event", ig)
	}
	for _, in := range up.Inputs {
		if err := h.b.deliverReport(id, in); err != nil {
			// Not journaled: no PUBACK, so the device publishes it again.
			h.b.log.Warn("mqtt: uplink not journaled; not acknowledged", "device", id, "error", err)
			return packets.ErrRejectPacket
		}
	}
	return nil
}
