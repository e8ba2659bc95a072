package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

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
	// TimestampSkew is how far a sign-type-1 client ID's hour may be from
	// the clock; 0 means one hour.
	TimestampSkew time.Duration
	Clock         clock.Clock  // nil: clock.Real()
	Logger        *slog.Logger // nil: discard
}

// Broker is the embedded MQTT broker (mochi-mqtt) with IoTDA device login,
// a per-device topic ACL, implicit subscription to the down topic, presence,
// and uplinks taken in process. It implements transport.Downlinks.
type Broker struct {
	cfg    BrokerConfig
	server *mqtt.Server
	log    *slog.Logger
	addrs  map[string]string

	mu       sync.Mutex
	sessions map[string]map[*mqtt.Client]bool // device ID → its connections
}

var _ transport.Downlinks = (*Broker)(nil)

// NewBroker builds the broker and opens its listeners; Start serves them.
func NewBroker(cfg BrokerConfig) (*Broker, error) {
	if cfg.Credentials == nil || cfg.Uplinks == nil || cfg.Downloads == nil {
		return nil, errors.New("mqtt: BrokerConfig needs Credentials, Uplinks and Downloads")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.TimestampSkew == 0 {
		cfg.TimestampSkew = time.Hour
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumQos = 1         // spec 2.1: no QoS 2
	caps.RetainAvailable = 0    // no retained messages
	caps.SharedSubAvailable = 0 // devices subscribe only to their own topic
	caps.WildcardSubAvailable = 0
	caps.MaximumPacketSize = iotda.MaxPayload + 64<<10
	caps.MaximumSessionExpiryInterval = 0 // sessions end with the connection
	caps.MaximumClients = math.MaxInt64
	b := &Broker{
		cfg:      cfg,
		log:      cfg.Logger,
		addrs:    map[string]string{},
		sessions: map[string]map[*mqtt.Client]bool{},
	}
	b.server = mqtt.New(&mqtt.Options{
		InlineClient: true,
		Capabilities: caps,
		Logger:       cfg.Logger.With("component", "mqtt-broker"),
	})
	if err := b.server.AddHook(&hook{b: b}, nil); err != nil {
		return nil, err
	}
	add := func(id, addr string, tc *tls.Config) error {
		l := listeners.NewTCP(listeners.Config{ID: id, Address: addr, TLSConfig: tc})
		if err := b.server.AddListener(l); err != nil {
			return fmt.Errorf("mqtt: listening on %s: %w", addr, err)
		}
		b.addrs[id] = l.Address()
		return nil
	}
	if cfg.Addr != "" {
		if err := add("mqtt", cfg.Addr, nil); err != nil {
			b.server.Close()
			return nil, err
		}
	}
	if cfg.TLSAddr != "" && cfg.TLS != nil {
		if err := add("mqtts", cfg.TLSAddr, cfg.TLS); err != nil {
			b.server.Close()
			return nil, err
		}
	}
	return b, nil
}

// Addr returns the address a listener ("mqtt" or "mqtts") is bound to; "" if
// it has none.
func (b *Broker) Addr(listener string) string { return b.addrs[listener] }

// Start serves the listeners in the background.
func (b *Broker) Start() error { return b.server.Serve() }

// Close disconnects every device and closes the listeners.
//
// mochi's own Close lists a listener's clients under a read lock that it
// takes twice (Clients.GetByListener calls Len), which deadlocks against a
// client disconnecting at the same moment (a waiting writer). So each
// listener is closed here first with a closer that takes the lock once;
// mochi's Close then finds them closed and skips that step.
func (b *Broker) Close() error {
	for id := range b.addrs {
		b.server.Listeners.Close(id, b.closeClients)
	}
	return b.server.Close()
}

// closeClients disconnects the clients of one listener.
func (b *Broker) closeClients(listener string) {
	for _, cl := range b.server.Clients.GetAll() {
		if cl.Net.Listener == listener && !cl.Closed() {
			_ = b.server.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

// Send publishes a downlink on the device's down topic (QoS 1). A device
// that is not connected misses it; the device machine's deadlines cover that.
func (b *Broker) Send(ctx context.Context, dl *messages.Downlink) error {
	payload, err := encodeDownlink(dl, b.cfg.Downloads, b.cfg.Clock.Now())
	if err != nil {
		return err
	}
	return b.server.Publish(iotda.DownTopic(dl.GetDeviceId()), payload, false, 1)
}

// RevokeToken: tokens are checked against the device's running job on every
// download request, so a finished or stopped job's token is refused already;
// nothing to do here.
func (b *Broker) RevokeToken(ctx context.Context, r *messages.RevokeToken) error { return nil }

// encodeDownlink is the JSON event of an MQTT downlink.
func encodeDownlink(dl *messages.Downlink, d Downloads, now time.Time) ([]byte, error) {
	id := dl.GetDeviceId()
	switch k := dl.GetKind().(type) {
	case *messages.Downlink_MqttVersionQuery:
		return iotda.EncodeVersionQuery(id, now), nil
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
		return iotda.EncodeUpgrade(id, job.GetTaskType() == messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE, p, now), nil
	}
	return nil, fmt.Errorf("mqtt: downlink %T is not an MQTT one (device %s)", dl.GetKind(), id)
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

// hook is the broker's mochi hook: login, ACL, implicit subscription,
// presence and uplinks.
type hook struct {
	mqtt.HookBase
	b *Broker
}

func (h *hook) ID() string { return "otafleet" }

func (h *hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSessionEstablished,
		mqtt.OnDisconnect, mqtt.OnPublish:
		return true
	}
	return false
}

// OnConnect logs a device in, answering refusals with IoTDA's CONNACK
// codes (spec 2.1): a malformed client ID or a keep-alive outside 30–1200 s
// gets 0x02 (identifier rejected); a wrong username, timestamp or password,
// or an unknown device, gets 0x04 (bad user name or password). MQTT 5
// clients get the matching reason codes 0x85 and 0x86. (mochi's own
// authentication path would answer 0x05 to MQTT 3.1.1 clients.)
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	refuse := func(code packets.Code, why string, args ...any) error {
		h.b.log.Info("mqtt: connection refused", append([]any{"client_id", pk.Connect.ClientIdentifier, "reason", why}, args...)...)
		if code == packets.ErrBadUsernameOrPassword && cl.Properties.ProtocolVersion < 5 {
			code = packets.ErrMalformedUsernameOrPassword // 0x04 in MQTT 3.1.1
		}
		if err := h.b.server.SendConnack(cl, code, false, nil); err != nil {
			return err
		}
		return code
	}
	c, err := iotda.ParseClientID(pk.Connect.ClientIdentifier)
	if err != nil {
		return refuse(packets.ErrClientIdentifierNotValid, err.Error())
	}
	if ka := pk.Connect.Keepalive; ka < iotda.MinKeepAlive || ka > iotda.MaxKeepAlive {
		return refuse(packets.ErrClientIdentifierNotValid, "keep-alive out of range", "keep_alive", ka, "device", c.DeviceID)
	}
	if string(pk.Connect.Username) != c.DeviceID {
		return refuse(packets.ErrBadUsernameOrPassword, "username is not the client ID's device ID", "device", c.DeviceID)
	}
	if err := iotda.CheckTimestamp(c, h.b.cfg.Clock.Now(), h.b.cfg.TimestampSkew); err != nil {
		return refuse(packets.ErrBadUsernameOrPassword, err.Error(), "device", c.DeviceID)
	}
	creds, err := h.b.cfg.Credentials.DeviceCredentials(context.Background(), c.DeviceID)
	if err != nil {
		return refuse(packets.ErrBadUsernameOrPassword, fmt.Sprintf("device: %v", err), "device", c.DeviceID)
	}
	if creds.Secret == "" {
		return refuse(packets.ErrBadUsernameOrPassword, "the device has no secret", "device", c.DeviceID)
	}
	if !iotda.CheckPassword(creds.Secret, c.Timestamp, pk.Connect.Password) {
		return refuse(packets.ErrBadUsernameOrPassword, "wrong password", "device", c.DeviceID)
	}
	return nil
}

// OnConnectAuthenticate accepts: OnConnect, which runs first, has checked
// the login already.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool { return true }

// deviceOf is the device ID a connection logged in as (its username, checked
// at login).
func deviceOf(cl *mqtt.Client) string { return string(cl.Properties.Username) }

// OnACLCheck lets a device publish and subscribe only under its own
// $oc/devices/{device_id}/ topics.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	id, _, ok := iotda.ParseTopic(topic)
	allowed := ok && id == deviceOf(cl)
	if !allowed {
		h.b.log.Info("mqtt: topic refused", "device", deviceOf(cl), "topic", topic, "publish", write)
	}
	return allowed
}

// OnSessionEstablished subscribes the device to its down topic (devices
// built for IoTDA never SUBSCRIBE) and reports it online.
//
// A connection with the client ID of an existing one replaces it (MQTT's
// session takeover). IoTDA allows one connection per device (spec 2.9);
// otafleet accepts several with different client IDs (the sign type 0 and 1
// forms, or another hour), so that a debugging client such as mosquitto_sub
// can listen beside the device: each gets the downlinks, and the device is
// online while any of them is connected.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	id := deviceOf(cl)
	sub := packets.Subscription{Filter: iotda.DownTopic(id), Qos: 1}
	h.b.server.Topics.Subscribe(cl.ID, sub)
	cl.State.Subscriptions.Add(sub.Filter, sub)

	h.b.mu.Lock()
	if h.b.sessions[id] == nil {
		h.b.sessions[id] = map[*mqtt.Client]bool{}
	}
	h.b.sessions[id][cl] = true
	h.b.mu.Unlock()
	h.b.deliver(id, &messages.DeviceInput{Kind: &messages.DeviceInput_Connected{Connected: &messages.Connected{}}})
}

// OnDisconnect reports the device offline when its last connection ends.
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	id := deviceOf(cl)
	if id == "" {
		return
	}
	h.b.mu.Lock()
	conns := h.b.sessions[id]
	if !conns[cl] {
		h.b.mu.Unlock()
		return // refused at login, or already counted
	}
	delete(conns, cl)
	last := len(conns) == 0
	if last {
		delete(h.b.sessions, id)
	}
	h.b.mu.Unlock()
	if last {
		h.b.deliver(id, &messages.DeviceInput{Kind: &messages.DeviceInput_Disconnected{Disconnected: &messages.Disconnected{}}})
	}
}

// OnPublish takes a device's uplink in process (no subscriber queue that
// could drop it), decodes it and hands it to the engine, which journals it
// before the broker acknowledges it: when the engine cannot (its journal
// failed, it is stopping), the publish is rejected and gets no PUBACK.
// Uplinks go to no other subscriber.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // the platform's own downlinks
	}
	id := deviceOf(cl)
	if pk.TopicName != iotda.UpTopic(id) {
		h.b.log.Debug("mqtt: publish on another topic ignored", "device", id, "topic", pk.TopicName)
		return pk, packets.CodeSuccessIgnore
	}
	up, err := iotda.DecodeUplink(id, pk.Payload)
	if err != nil {
		h.b.log.Warn("mqtt: malformed uplink ignored", "device", id, "error", err, "bytes", len(pk.Payload))
		return pk, packets.CodeSuccessIgnore
	}
	for _, ig := range up.Ignored {
		h.b.log.Debug("mqtt: uplink event ignored", "device", id, "event", ig)
	}
	for _, in := range up.Inputs {
		if err := h.b.deliverReport(id, in); err != nil {
			// Not journaled: no PUBACK, so the device publishes it again.
			h.b.log.Warn("mqtt: uplink not journaled; not acknowledged", "device", id, "error", err)
			return pk, packets.ErrRejectPacket
		}
	}
	return pk, packets.CodeSuccessIgnore
}
