package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net/url"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/mqtt/iotda"
)

// ExternalConfig configures the adapter to an external broker.
type ExternalConfig struct {
	// Broker is the broker's URL: tcp://host:port, ssl://host:port (or
	// mqtts://); user:password@ in it log the adapter in.
	Broker string
	// ClientID names the adapter's persistent session; default "otafleet".
	// Only one otafleet may use it at a time.
	ClientID string
	TLS      *tls.Config
	// Uplinks receives the devices' reports; Downloads fills upgrade events.
	Uplinks   transport.Uplinks
	Downloads Downloads
	// ProbeInterval is how often an awaited device is sent version_query
	// again (default one minute); ProbeFor how long it is probed at most
	// (default 26 hours, beyond the MQTT online timeout).
	ProbeInterval time.Duration
	ProbeFor      time.Duration
	Clock         clock.Clock  // nil: clock.Real()
	Logger        *slog.Logger // nil: discard
}

// upFilter subscribes to every device's up topic.
const upFilter = "$oc/devices/+/sys/events/up"

// External connects the engine to devices on an external MQTT 3.1.1 broker
// (Mosquitto, EMQX, ...) through one paho client with a persistent session:
// it subscribes to every device's up topic with QoS 1, so reports that
// arrive while it reconnects wait in the broker, and publishes downlinks on
// the devices' down topics. The broker authenticates the devices and must
// let each subscribe to its own down topic (devices on an external broker
// subscribe themselves). Connections are invisible here: a device counts as
// online when it reports, and a device a job waits for is probed with
// version_query every ProbeInterval until it answers.
type External struct {
	cfg    ExternalConfig
	client paho.Client
	log    *slog.Logger

	mu    sync.Mutex
	probe map[string]time.Time // awaited device → probing stops after
	stop  chan struct{}
	done  chan struct{}

	// Reports are journaled on lanes, so that many devices' reports share
	// the engine's group commits: a device's reports all take one lane (its
	// order is kept), and a publish is acknowledged once journaled.
	lanes     [externalLanes]chan paho.Message
	laneSeed  maphash.Seed
	laneCtx   context.Context // ends when the adapter closes
	laneStop  context.CancelFunc
	laneGroup sync.WaitGroup
}

// externalLanes is how many devices' reports the adapter hands the engine at
// once; laneQueue how many publishes wait for each lane before paho's
// delivery waits for room.
const (
	externalLanes = 64
	laneQueue     = 16
)

var _ transport.Downlinks = (*External)(nil)

// NewExternal connects to the broker (it keeps reconnecting afterwards) and
// subscribes; it fails when the first connection fails or ctx ends first.
func NewExternal(ctx context.Context, cfg ExternalConfig) (*External, error) {
	if cfg.Uplinks == nil || cfg.Downloads == nil {
		return nil, errors.New("mqtt: ExternalConfig needs Uplinks and Downloads")
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "otafleet"
	}
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = time.Minute
	}
	if cfg.ProbeFor <= 0 {
		cfg.ProbeFor = 26 * time.Hour
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	u, err := url.Parse(cfg.Broker)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("mqtt: broker URL %q: want tcp://host:port or ssl://host:port", cfg.Broker)
	}
	e := &External{cfg: cfg, log: cfg.Logger.With("component", "mqtt-external"), probe: map[string]time.Time{},
		stop: make(chan struct{}), done: make(chan struct{}), laneSeed: maphash.MakeSeed()}
	e.laneCtx, e.laneStop = context.WithCancel(context.Background())
	for i := range e.lanes {
		e.lanes[i] = make(chan paho.Message, laneQueue)
		e.laneGroup.Add(1)
		go e.runLane(e.lanes[i])
	}
	o := paho.NewClientOptions().AddBroker(cfg.Broker).SetClientID(cfg.ClientID).
		SetCleanSession(false). // reports queue in the broker while we reconnect
		SetResumeSubs(true).SetOrderMatters(true).SetAutoReconnect(true).SetConnectRetry(false).
		SetAutoAckDisabled(true). // onMessage acknowledges a report once the engine journaled it
		SetKeepAlive(60 * time.Second).SetMaxReconnectInterval(10 * time.Second).
		SetDefaultPublishHandler(e.onMessage).
		SetOnConnectHandler(func(c paho.Client) {
			// Subscribe on every connection: a broker that lost the session
			// (restarted without persistence) forgets the subscription.
			tok := c.Subscribe(upFilter, 1, e.onMessage)
			go func() {
				if tok.Wait(); tok.Error() != nil {
					e.log.Error("mqtt: subscribing to the devices' up topics", "error", tok.Error())
				}
			}()
			e.log.Info("mqtt: connected to the external broker", "broker", cfg.Broker)
		}).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			e.log.Warn("mqtt: lost the external broker; reconnecting", "broker", cfg.Broker, "error", err)
		})
	if u.User != nil {
		o.SetUsername(u.User.Username())
		if p, ok := u.User.Password(); ok {
			o.SetPassword(p)
		}
	}
	if cfg.TLS != nil {
		o.SetTLSConfig(cfg.TLS)
	}
	e.client = paho.NewClient(o)
	tok := e.client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		e.client.Disconnect(0)
		e.stopLanes()
		return nil, ctx.Err()
	}
	if err := tok.Error(); err != nil {
		e.stopLanes()
		return nil, fmt.Errorf("mqtt: connecting to %s: %w", cfg.Broker, err)
	}
	go e.probeLoop()
	return e, nil
}

// onMessage queues a publish on its device's lane. The lane acknowledges the
// publish (PUBACK to the broker, which then forgets it) once the engine has
// journaled every input of it, or when it is of no use (another topic, a
// malformed payload); when the engine cannot journal it, the publish stays
// unacknowledged and the broker delivers it again on the next connection of
// the adapter's persistent session. (PUBACKs of different devices' reports
// may leave in another order than their publishes came; brokers take that.)
func (e *External) onMessage(_ paho.Client, m paho.Message) {
	id, _, _ := iotda.ParseTopic(m.Topic())
	select {
	case e.lanes[maphash.String(e.laneSeed, id)%externalLanes] <- m:
	case <-e.laneCtx.Done(): // closing: unacknowledged, the broker keeps it
	}
}

// runLane journals the publishes of its devices in order.
func (e *External) runLane(ch <-chan paho.Message) {
	defer e.laneGroup.Done()
	for {
		select {
		case <-e.laneCtx.Done():
			return
		case m := <-ch:
			if e.handle(m) {
				m.Ack()
			}
		}
	}
}

func (e *External) stopLanes() {
	e.laneStop()
	e.laneGroup.Wait()
}

// handle delivers one publish; false when it must not be acknowledged.
func (e *External) handle(m paho.Message) bool {
	id, rest, ok := iotda.ParseTopic(m.Topic())
	if !ok || rest != "sys/events/up" {
		e.log.Debug("mqtt: publish on another topic ignored", "topic", m.Topic())
		return true
	}
	e.mu.Lock()
	delete(e.probe, id) // it answered: online
	e.mu.Unlock()
	up, err := iotda.DecodeUplink(id, m.Payload())
	if err != nil {
		e.log.Warn("mqtt: malformed uplink ignored", "device", id, "error", err, "bytes", len(m.Payload()))
		return true
	}
	for _, ig := range up.Ignored {
		e.log.Debug("mqtt: uplink event ignored", "device", id, "event", ig)
	}
	inputs := up.Inputs
	if len(inputs) == 0 {
		// Another service's event still shows the device online.
		inputs = []*messages.DeviceInput{{Kind: &messages.DeviceInput_Uplink{Uplink: &messages.Uplink{}}}}
	}
	for _, in := range inputs {
		ctx, cancel := context.WithTimeout(e.laneCtx, deliverWait)
		err := e.cfg.Uplinks.Deliver(ctx, id, in)
		cancel()
		if err != nil {
			e.log.Warn("mqtt: uplink not journaled; not acknowledged", "device", id, "error", err)
			return false
		}
	}
	return true
}

// Send publishes a downlink with QoS 1. A version_query also makes the
// device awaited: it is probed until it reports.
func (e *External) Send(ctx context.Context, dl *messages.Downlink) error {
	now := e.cfg.Clock.Now()
	payload, offer, err := encodeDownlink(dl, e.cfg.Downloads, now)
	if err != nil {
		return err
	}
	id := dl.GetDeviceId()
	if _, ok := dl.GetKind().(*messages.Downlink_MqttVersionQuery); ok {
		e.mu.Lock()
		e.probe[id] = now.Add(e.cfg.ProbeFor)
		e.mu.Unlock()
	}
	// Not waiting for the broker's PUBACK: an actor calls Send, and paho
	// reads that PUBACK on the goroutine that hands reports to the lanes,
	// which may be waiting for this very actor.
	tok := e.client.Publish(iotda.DownTopic(id), 1, false, payload)
	go func() {
		if <-tok.Done(); tok.Error() != nil {
			e.log.Warn("mqtt: downlink not published", "device", id, "error", tok.Error())
		}
	}()
	if offer != nil {
		// Not a report: the engine queues it and returns at once.
		if err := e.cfg.Uplinks.Deliver(ctx, id, offer); err != nil {
			e.log.Warn("mqtt: delivering to the engine", "device", id, "error", err)
		}
	}
	return nil
}

func (e *External) publish(ctx context.Context, id string, payload []byte) error {
	tok := e.client.Publish(iotda.DownTopic(id), 1, false, payload)
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RevokeToken: as with the embedded broker, tokens are checked against the
// running job on every download.
func (e *External) RevokeToken(context.Context, *messages.RevokeToken) error { return nil }

// probeLoop re-sends version_query to the awaited devices every interval.
func (e *External) probeLoop() {
	defer close(e.done)
	for {
		t := e.cfg.Clock.NewTimer(e.cfg.ProbeInterval)
		select {
		case <-e.stop:
			t.Stop()
			return
		case <-t.C():
		}
		now := e.cfg.Clock.Now()
		e.mu.Lock()
		var ids []string
		for id, until := range e.probe {
			if now.After(until) {
				delete(e.probe, id)
				continue
			}
			ids = append(ids, id)
		}
		e.mu.Unlock()
		for _, id := range ids {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := e.publish(ctx, id, iotda.EncodeVersionQuery(id, now)); err != nil {
				e.log.Warn("mqtt: probing a device", "device", id, "error", err)
			}
			cancel()
		}
	}
}

// Awaited reports how many devices are being probed.
func (e *External) Awaited() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.probe)
}

// Close stops probing and disconnects; the broker keeps the session (and
// queues reports) for the next start.
func (e *External) Close() error {
	close(e.stop)
	<-e.done
	e.stopLanes()
	e.client.Disconnect(250)
	return nil
}
