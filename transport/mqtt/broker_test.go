package mqtt

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/download"
	"github.com/otafleet/otafleet/transport/mqtt/iotda"
)

// recorder is the engine's side: every delivered input, as text.
type recorder struct {
	mu  sync.Mutex
	got []string
	ch  chan string
}

func newRecorder() *recorder { return &recorder{ch: make(chan string, 1000)} }

func (r *recorder) Deliver(_ context.Context, id string, in *messages.DeviceInput) error {
	// prototext varies its spacing on purpose: normalise it.
	s := id + " " + strings.NewReplacer(": ", ":", "{ ", "{", " }", "}").Replace(strings.Join(strings.Fields(prototext.Format(in)), " "))
	r.mu.Lock()
	r.got = append(r.got, s)
	r.mu.Unlock()
	r.ch <- s
	return nil
}

// next waits for the next delivered input.
func (r *recorder) next(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	select {
	case s := <-r.ch:
		return s
	case <-ctx.Done():
		t.Fatal("no input delivered")
		return ""
	}
}

// fakeDownloads mints predictable URLs and tokens.
type fakeDownloads struct{}

func (fakeDownloads) Mint(taskID, deviceID string, attempt uint32, packageID string) (string, string, time.Time) {
	return "https://127.0.0.1:8943/packages/" + packageID, fmt.Sprintf("tok-%s-%s-%d", taskID, deviceID, attempt),
		time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
}

var epoch = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

type env struct {
	b   *Broker
	rec *recorder
	clk *clocktest.Clock
	reg *prometheus.Registry
}

func newEnv(t *testing.T) *env { t.Helper(); return newEnvWith(t, nil) }

// newEnvWith is newEnv with the broker's configuration changed by set.
func newEnvWith(t *testing.T, set func(*BrokerConfig)) *env {
	t.Helper()
	rec := newRecorder()
	e := newEnvFull(t, rec, set)
	e.rec = rec
	return e
}

// newEnvUplinks is newEnv with the engine's side played by up (env.rec is nil).
func newEnvUplinks(t *testing.T, up transport.Uplinks) *env {
	t.Helper()
	return newEnvFull(t, up, nil)
}

func newEnvFull(t *testing.T, up transport.Uplinks, set func(*BrokerConfig)) *env {
	t.Helper()
	ctx := context.Background()
	st := memstore.New()
	if err := st.PutProduct(ctx, persistence.Product{ID: "p", Name: "p", Protocol: persistence.ProtocolMQTT}); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateDevices(ctx, []persistence.Device{
		{ID: "d1", ProductID: "p", Secret: "secret-1"}, {ID: "d_2", ProductID: "p", Secret: "secret-2"}, {ID: "nosecret", ProductID: "p"},
	}); err != nil {
		t.Fatal(err)
	}
	clk := clocktest.New(epoch)
	reg := prometheus.NewRegistry()
	cfg := BrokerConfig{Addr: "127.0.0.1:0", Credentials: st, Uplinks: up, Downloads: fakeDownloads{}, Clock: clk, Metrics: reg}
	if set != nil {
		set(&cfg)
	}
	b, err := NewBroker(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return &env{b: b, clk: clk, reg: reg}
}

// connect logs a paho client in; clientID "" means the device's proper one.
func (e *env) connect(t *testing.T, device, secret, clientID string, keepAlive time.Duration, onMessage paho.MessageHandler) (paho.Client, error) {
	t.Helper()
	c := iotda.NewClientID(device, epoch)
	if clientID == "" {
		clientID = c.String()
	}
	o := paho.NewClientOptions().AddBroker("tcp://" + e.b.Addr("mqtt")).SetClientID(clientID).
		SetUsername(device).SetPassword(iotda.Password(secret, c.Timestamp)).SetKeepAlive(keepAlive).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).SetProtocolVersion(4)
	if onMessage != nil {
		o.SetDefaultPublishHandler(onMessage)
	}
	cl := paho.NewClient(o)
	tok := cl.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("connect timed out")
	}
	if tok.Error() != nil {
		return nil, tok.Error()
	}
	t.Cleanup(func() { cl.Disconnect(0) })
	return cl, nil
}

func publish(t *testing.T, cl paho.Client, topic string, payload []byte) {
	t.Helper()
	tok := cl.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
}

func TestLoginUplinkDownlink(t *testing.T) {
	e := newEnv(t)
	down := make(chan paho.Message, 10)
	cl, err := e.connect(t, "d_2", "secret-2", "", 120*time.Second, func(_ paho.Client, m paho.Message) { down <- m })
	if err != nil {
		t.Fatal(err)
	}
	if got := e.rec.next(t); got != "d_2 connected:{}" {
		t.Fatalf("first input %q", got)
	}
	fw := "1.0"
	publish(t, cl, iotda.UpTopic("d_2"), iotda.EncodeVersionReport("d_2", &fw, nil, epoch))
	if got := e.rec.next(t); got != `d_2 version_reported:{fw_version:"1.0"}` {
		t.Fatalf("report %q", got)
	}
	// A malformed report is dropped; the next good one still arrives.
	publish(t, cl, iotda.UpTopic("d_2"), []byte(`{"services":[{"service_id":"$ota","event_type":"version_report"`))
	pr := 30
	publish(t, cl, iotda.UpTopic("d_2"), iotda.EncodeProgress("d_2", iotda.Progress{Progress: &pr, Version: "1.0"}, epoch))
	if got := e.rec.next(t); got != `d_2 mqtt_progress:{progress:30 version:"1.0"}` {
		t.Fatalf("after a malformed report: %q", got)
	}

	// Downlinks reach the device without it subscribing.
	if err := e.b.Send(context.Background(), &messages.Downlink{DeviceId: "d_2", Kind: &messages.Downlink_MqttVersionQuery{MqttVersionQuery: &messages.MqttVersionQuery{}}}); err != nil {
		t.Fatal(err)
	}
	m := waitMsg(t, down)
	if m.Topic() != iotda.DownTopic("d_2") || m.Qos() != 1 {
		t.Fatalf("downlink on %s qos %d", m.Topic(), m.Qos())
	}
	if d, ok, err := iotda.DecodeDownlink(m.Payload()); err != nil || !ok || d.EventType != iotda.EventVersionQuery {
		t.Fatalf("version query %s: %v", m.Payload(), err)
	}
	job := &messages.Job{TaskId: "t1", Attempt: 2, TaskType: messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE, Package: &messages.Package{
		PackageId: "k1", Version: "2.0", Size: 1234, FileName: "app.bin", Sha256: strings.Repeat("ab", 32), CustomInfo: "ci",
	}}
	if err := e.b.Send(context.Background(), &messages.Downlink{DeviceId: "d_2", Kind: &messages.Downlink_MqttUpgrade{MqttUpgrade: &messages.MqttUpgrade{Job: job}}}); err != nil {
		t.Fatal(err)
	}
	d, ok, err := iotda.DecodeDownlink(waitMsg(t, down).Payload())
	want := iotda.UpgradeParas{Version: "2.0", URL: "https://127.0.0.1:8943/packages/k1", FileSize: 1234, FileName: "app.bin",
		AccessToken: "tok-t1-d_2-2", Expires: 24 * 3600, Sign: strings.Repeat("ab", 32), CustomInfo: "ci"}
	if err != nil || !ok || d.EventType != iotda.EventSoftwareUpgrade || *d.Upgrade != want {
		t.Fatalf("upgrade event %+v %v", d.Upgrade, err)
	}
	// The engine is told the URL and token the device was given (its timeline).
	if got, want := e.rec.next(t), `d_2 download_offered:{task_id:"t1" attempt:2 uri:"`+want.URL+`" token:"`+want.AccessToken+`"}`; got != want {
		t.Fatalf("after the upgrade event %q, want %q", got, want)
	}
	job.Package.OmitSign = true
	job.TaskType = messages.TaskType_TASK_TYPE_FIRMWARE_UPGRADE
	if err := e.b.Send(context.Background(), &messages.Downlink{DeviceId: "d_2", Kind: &messages.Downlink_MqttUpgrade{MqttUpgrade: &messages.MqttUpgrade{Job: job}}}); err != nil {
		t.Fatal(err)
	}
	d, _, _ = iotda.DecodeDownlink(waitMsg(t, down).Payload())
	if d.EventType != iotda.EventFirmwareUpgrade || d.Upgrade.Sign != "" {
		t.Fatalf("omit_sign event %+v", d)
	}
	if got := e.rec.next(t); !strings.HasPrefix(got, "d_2 download_offered:") {
		t.Fatalf("after the second upgrade event %q", got)
	}
	if err := e.b.Send(context.Background(), &messages.Downlink{DeviceId: "d_2", Kind: &messages.Downlink_Lwm2MRead{Lwm2MRead: &messages.Lwm2MRead{Path: "/3/0/3"}}}); err == nil {
		t.Error("an LwM2M downlink was sent over MQTT")
	}

	cl.Disconnect(0)
	if got := e.rec.next(t); got != "d_2 disconnected:{}" {
		t.Fatalf("after disconnect %q", got)
	}
}

// TestIdleDevicesNotWalked checks that connected, idle devices cost the
// broker no periodic work: mochi's event loop, whose once-a-second tickers
// walk every client in mochi's index, is not running; that index holds none
// of the connected devices (so no walk of it could reach them); and the
// broker arms no timer on its clock for them.
func TestIdleDevicesNotWalked(t *testing.T) {
	e := newEnv(t)
	down := make(chan paho.Message, 10)
	for _, c := range []struct{ device, secret string }{{"d1", "secret-1"}, {"d_2", "secret-2"}} {
		if _, err := e.connect(t, c.device, c.secret, "", 60*time.Second, func(_ paho.Client, m paho.Message) { down <- m }); err != nil {
			t.Fatal(err)
		}
		if got := e.rec.next(t); got != c.device+" connected:{}" { // delivered once the connection is in its session
			t.Fatalf("input %q", got)
		}
		if err := e.b.Send(context.Background(), &messages.Downlink{DeviceId: c.device, Kind: &messages.Downlink_MqttVersionQuery{MqttVersionQuery: &messages.MqttVersionQuery{}}}); err != nil {
			t.Fatal(err)
		}
		waitMsg(t, down)
	}

	var stacks []byte
	for n := 1 << 16; ; n *= 2 {
		stacks = make([]byte, n)
		if k := runtime.Stack(stacks, true); k < n {
			stacks = stacks[:k]
			break
		}
	}
	if i := bytes.Index(stacks, []byte("mqtt/server/v2.(*Server).eventLoop")); i >= 0 {
		t.Errorf("mochi's event loop runs (its tickers walk the clients once a second):\n%s", stacks[max(i-200, 0):min(i+200, len(stacks))])
	}
	if n := e.b.server.Clients.Len(); n != 0 {
		t.Errorf("mochi's client index holds %d clients, want none (its housekeeping walks it)", n)
	}
	if n := e.clk.Pending(); n != 0 {
		t.Errorf("the broker armed %d timers for idle devices, want none", n)
	}
}

func waitMsg(t *testing.T, ch chan paho.Message) paho.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	select {
	case m := <-ch:
		return m
	case <-ctx.Done():
		t.Fatal("no downlink")
		return nil
	}
}

func TestLoginRefused(t *testing.T) {
	e := newEnv(t)
	ts := iotda.NewClientID("d1", epoch).Timestamp
	for _, c := range []struct {
		name, device, secret, clientID string
		keepAlive                      time.Duration
		want                           string // paho's error for the CONNACK code
	}{
		{"wrong password", "d1", "nope", "", 120 * time.Second, "bad user name or password"},
		{"unknown device", "ghost", "x", "", 120 * time.Second, "bad user name or password"},
		{"device without secret", "nosecret", "", "", 120 * time.Second, "bad user name or password"},
		{"username is another device", "d_2", "secret-2", "d1_0_1_" + ts, 120 * time.Second, "bad user name or password"},
		{"timestamp three hours off", "d1", "secret-1", "d1_0_1_" + epoch.Add(-3*time.Hour).Format(iotda.TimestampLayout), 120 * time.Second, "bad user name or password"},
		{"bad client ID", "d1", "secret-1", "d1", 120 * time.Second, "identifier rejected"},
		{"identity type 2", "d1", "secret-1", "d1_2_1_" + ts, 120 * time.Second, "identifier rejected"},
		{"keep-alive 10 s", "d1", "secret-1", "", 10 * time.Second, "identifier rejected"},
		{"keep-alive 1500 s", "d1", "secret-1", "", 1500 * time.Second, "identifier rejected"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.connect(t, c.device, c.secret, c.clientID, c.keepAlive, nil)
			if err == nil || !strings.Contains(strings.ToLower(err.Error()), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
	// Sign type 0 skips the timestamp check.
	old := "d1_0_0_" + epoch.Add(-72*time.Hour).Format(iotda.TimestampLayout)
	o := paho.NewClientOptions().AddBroker("tcp://" + e.b.Addr("mqtt")).SetClientID(old).SetUsername("d1").
		SetPassword(iotda.Password("secret-1", old[len(old)-10:])).SetKeepAlive(60 * time.Second).SetAutoReconnect(false)
	cl := paho.NewClient(o)
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("sign type 0 with an old timestamp: %v", tok.Error())
	}
	cl.Disconnect(0)
	if got := e.rec.next(t); got != "d1 connected:{}" {
		t.Fatalf("got %q", got)
	}
	if n := len(e.rec.ch); n > 1 {
		t.Fatalf("refused logins delivered inputs: %v", e.rec.got)
	}
}

func TestTopicACL(t *testing.T) {
	e := newEnv(t)
	cl, err := e.connect(t, "d1", "secret-1", "", 60*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.rec.next(t) // connected
	// Subscribing to another device's topic is refused (SUBACK 0x80).
	tok := cl.Subscribe(iotda.DownTopic("d_2"), 1, nil)
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("subscribe timed out")
	}
	if codes := tok.(*paho.SubscribeToken).Result(); codes[iotda.DownTopic("d_2")] != 0x80 {
		t.Fatalf("SUBACK %v", codes)
	}
	// Its own down topic is fine.
	tok = cl.Subscribe(iotda.DownTopic("d1"), 1, nil)
	if !tok.WaitTimeout(10*time.Second) || tok.(*paho.SubscribeToken).Result()[iotda.DownTopic("d1")] != 1 {
		t.Fatalf("own subscription: %v", tok.Error())
	}
	// Publishing as another device: an MQTT 3.1.1 QoS 1 publish gets the
	// connection closed, and nothing reaches the engine.
	fw := "6.6"
	cl.Publish(iotda.UpTopic("d_2"), 1, false, iotda.EncodeVersionReport("d_2", &fw, nil, epoch)).WaitTimeout(2 * time.Second)
	if got := e.rec.next(t); got != "d1 disconnected:{}" {
		t.Fatalf("after a foreign publish: %q", got)
	}
	for _, s := range e.rec.got {
		if strings.Contains(s, "6.6") {
			t.Fatalf("a foreign report was delivered: %v", e.rec.got)
		}
	}
}

// TestConnectionsOfOneDevice: a second connection with another client ID
// joins the first (both get downlinks); the same client ID takes the old
// connection over; the device is offline when the last one ends.
// TestConnectionsOfOneDevice: a device may have several connections (other
// client IDs); it is online (delivered and counted in Presence once) until
// the last one ends, and a take-over of one client ID keeps it online.
func TestConnectionsOfOneDevice(t *testing.T) {
	presence := transport.NewPresence()
	e := newEnvWith(t, func(c *BrokerConfig) { c.Presence = presence })
	online := func(want int) {
		t.Helper()
		if got := presence.Counts()["p"]; got != want || presence.Online("d1") != (want == 1) {
			t.Fatalf("presence of product p: %d online (d1: %v), want %d", got, presence.Online("d1"), want)
		}
	}
	online(0)
	ts := iotda.NewClientID("d1", epoch).Timestamp
	dial := func(clientID string, lost chan error, down chan paho.Message) paho.Client {
		t.Helper()
		o := paho.NewClientOptions().AddBroker("tcp://" + e.b.Addr("mqtt")).SetClientID(clientID).SetUsername("d1").
			SetPassword(iotda.Password("secret-1", ts)).SetKeepAlive(60 * time.Second).SetAutoReconnect(false).
			SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err }).
			SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { down <- m })
		cl := paho.NewClient(o)
		if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
		return cl
	}
	lost1, lost2, lost3 := make(chan error, 1), make(chan error, 1), make(chan error, 1)
	down1, down2, down3 := make(chan paho.Message, 4), make(chan paho.Message, 4), make(chan paho.Message, 4)
	dial("d1_0_1_"+ts, lost1, down1)
	e.rec.next(t)
	online(1)
	second := dial("d1_0_0_"+ts, lost2, down2)
	if got := e.rec.next(t); got != "d1 connected:{}" {
		t.Fatalf("second connection: %q", got)
	}
	online(1)
	// Both listen.
	if err := e.b.Send(context.Background(), &messages.Downlink{DeviceId: "d1", Kind: &messages.Downlink_MqttVersionQuery{MqttVersionQuery: &messages.MqttVersionQuery{}}}); err != nil {
		t.Fatal(err)
	}
	waitMsg(t, down1)
	waitMsg(t, down2)
	// The first client ID again: it takes the first connection over.
	third := dial("d1_0_1_"+ts, lost3, down3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	select {
	case <-lost1:
	case <-ctx.Done():
		t.Fatal("the taken-over connection was not closed")
	}
	e.rec.next(t) // connected (the third)
	online(1)
	second.Disconnect(0)
	third.Disconnect(0)
	if got := e.rec.next(t); got != "d1 disconnected:{}" {
		t.Fatalf("after the last disconnect: %q", got)
	}
	online(0)
	e.rec.mu.Lock()
	defer e.rec.mu.Unlock()
	if n := strings.Count(strings.Join(e.rec.got, "\n"), "disconnected"); n != 1 {
		t.Fatalf("%d disconnects delivered: %v", n, e.rec.got)
	}
}

func TestEncodeDownlinkExpires(t *testing.T) {
	now := time.Date(2026, 11, 24, 11, 59, 59, 500_000_000, time.UTC)
	p, _, err := encodeDownlink(&messages.Downlink{DeviceId: "d", Kind: &messages.Downlink_MqttUpgrade{MqttUpgrade: &messages.MqttUpgrade{Job: &messages.Job{
		TaskId: "t", Attempt: 1, Package: &messages.Package{PackageId: "k", Version: "2"}}}}}, fakeDownloads{}, now)
	if err != nil {
		t.Fatal(err)
	}
	if d, _, _ := iotda.DecodeDownlink(p); d.Upgrade.Expires != 1 {
		t.Fatalf("expires %d, want 1 (rounded)", d.Upgrade.Expires)
	}
}

// TestLoginOverTLS: the MQTTS listener logs devices in the same way.
func TestLoginOverTLS(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	if err := st.PutProduct(ctx, persistence.Product{ID: "p", Name: "p", Protocol: persistence.ProtocolMQTT}); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateDevices(ctx, []persistence.Device{{ID: "d1", ProductID: "p", Secret: "secret-1"}}); err != nil {
		t.Fatal(err)
	}
	cert, err := download.LoadOrCreateCert(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	b, err := NewBroker(BrokerConfig{TLSAddr: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{cert}},
		Credentials: st, Uplinks: rec, Downloads: fakeDownloads{}, Clock: clocktest.New(epoch)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Addr("mqtt") != "" || b.Addr("mqtts") == "" {
		t.Fatalf("listeners: plain %q, tls %q", b.Addr("mqtt"), b.Addr("mqtts"))
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	c := iotda.NewClientID("d1", epoch)
	o := paho.NewClientOptions().AddBroker("ssl://" + b.Addr("mqtts")).SetClientID(c.String()).SetUsername("d1").
		SetPassword(iotda.Password("secret-1", c.Timestamp)).SetKeepAlive(60 * time.Second).SetAutoReconnect(false).
		SetTLSConfig(&tls.Config{RootCAs: pool})
	cl := paho.NewClient(o)
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("TLS login: %v", tok.Error())
	}
	defer cl.Disconnect(0)
	if got := rec.next(t); got != "d1 connected:{}" {
		t.Fatalf("got %q", got)
	}
}

// recordHandler hands every log record to a channel.
type recordHandler struct{ ch chan slog.Record }

func (h recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.ch <- r.Clone()
	return nil
}
func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recordHandler) WithGroup(string) slog.Handler      { return h }

// TestShutdownLogsNoEmptyWarning: closing the broker with a device
// connected logs the connection's end by name at debug level, not as a
// warning with an empty message (mochi's listener logs it without one).
func TestShutdownLogsNoEmptyWarning(t *testing.T) {
	logs := recordHandler{ch: make(chan slog.Record, 1000)}
	e := newEnvWith(t, func(c *BrokerConfig) { c.Logger = slog.New(logs) })
	if _, err := e.connect(t, "d1", "secret-1", "", time.Minute, nil); err != nil {
		t.Fatal(err)
	}
	e.rec.next(t) // the device is online
	if err := e.b.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		select {
		case r := <-logs.ch:
			if r.Message == "" || r.Level >= slog.LevelWarn {
				t.Fatalf("at shutdown: %v %q", r.Level, r.Message)
			}
			if r.Message == "mqtt: connection ended" {
				if r.Level != slog.LevelDebug {
					t.Fatalf("the connection's end at shutdown logged at %v", r.Level)
				}
				return
			}
		case <-ctx.Done():
			t.Fatal("the connection's end was not logged")
		}
	}
}
