package mqtt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport/mqtt/iotda"
)

// Tests of issue 18: devices as adversaries of the embedded broker.

// metricValue reads one counter of reg by name and reason label.
func metricValue(t *testing.T, reg *prometheus.Registry, name, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no metric %s{reason=%q}", name, reason)
	return 0
}

// pollUntil polls cond (real time, every 5 ms, at most 10 s): the broker
// acts on its own goroutines.
func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for !cond() {
		tm := clock.Real().NewTimer(5 * time.Millisecond)
		select {
		case <-ctx.Done():
			tm.Stop()
			t.Fatalf("timed out waiting for %s", what)
		case <-tm.C():
		}
	}
}

// connectPacket is an MQTT CONNECT of device (protocol version v) with its
// proper client ID and password at epoch.
func connectPacket(device, secret string, v byte) packets.Packet {
	c := iotda.NewClientID(device, epoch)
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: v}
	pk.Connect.ProtocolName = []byte("MQTT")
	pk.Connect.Clean = true
	pk.Connect.Keepalive = 60
	pk.Connect.ClientIdentifier = c.String()
	pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(device)
	pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(iotda.Password(secret, c.Timestamp))
	return pk
}

// rawConnect dials the broker from local (nil: any), sends pk and returns the
// connection and the CONNACK's return (reason) code.
func rawConnect(t *testing.T, addr string, local net.Addr, pk packets.Packet) (net.Conn, byte) {
	t.Helper()
	conn := dialFrom(t, addr, local)
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	// CONNACK: 0x20, remaining length, flags, code[, properties].
	hdr := make([]byte, 4)
	if _, err := io.ReadFull(conn, hdr); err != nil {
		t.Fatalf("reading the CONNACK: %v", err)
	}
	if hdr[0] != 0x20 {
		t.Fatalf("first packet back %#x, want a CONNACK", hdr[0])
	}
	return conn, hdr[3]
}

func dialFrom(t *testing.T, addr string, local net.Addr) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: local, Timeout: 10 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := conn.SetDeadline(clock.Real().Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	return conn
}

// closedByServer reads conn until the broker closes it; a read deadline (10
// s) that passes first fails the test.
func closedByServer(t *testing.T, conn net.Conn, what string) {
	t.Helper()
	_, err := io.Copy(io.Discard, conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: the broker kept the connection open", what)
	}
}

// TestWillRefused (issue 18 item 1): a CONNECT with a will message is
// refused with 0x05 (MQTT 5: 0x87), so a device can no longer leave a forged
// firmware_upgrade on another device's down topic by dropping its
// connection; the victim's first message is the platform's own.
func TestWillRefused(t *testing.T) {
	e := newEnv(t)
	down := make(chan paho.Message, 10)
	if _, err := e.connect(t, "d_2", "secret-2", "", 60*time.Second, func(_ paho.Client, m paho.Message) { down <- m }); err != nil {
		t.Fatal(err)
	}
	e.rec.next(t) // d_2 connected
	forged := iotda.EncodeUpgrade("d_2", false, iotda.UpgradeParas{Version: "6.6.6", URL: "http://evil.example/fw", FileSize: 1, FileName: "fw"}, epoch)
	for _, v := range []byte{4, 5} {
		pk := connectPacket("d1", "secret-1", v)
		pk.Connect.WillFlag, pk.Connect.WillQos = true, 1
		pk.Connect.WillTopic, pk.Connect.WillPayload = iotda.DownTopic("d_2"), forged
		conn, code := rawConnect(t, e.b.Addr("mqtt"), nil, pk)
		want := map[byte]byte{4: 0x05, 5: 0x87}[v]
		if code != want {
			t.Errorf("MQTT %d CONNECT with a will on another device's topic: CONNACK %#x, want %#x", v, code, want)
		}
		conn.Close() // drop without DISCONNECT: a will would be published now
	}
	// The victim's first message is the platform's own version query.
	if err := e.b.Send(context.Background(), &messages.Downlink{DeviceId: "d_2", Kind: &messages.Downlink_MqttVersionQuery{MqttVersionQuery: &messages.MqttVersionQuery{}}}); err != nil {
		t.Fatal(err)
	}
	if d, _, _ := iotda.DecodeDownlink(waitMsg(t, down).Payload()); d.EventType != iotda.EventVersionQuery {
		t.Fatalf("the victim's first downlink is %+v: a forged will reached it", d)
	}
	if n := metricValue(t, e.reg, "otafleet_mqtt_logins_refused_total", "will"); n != 2 {
		t.Errorf("logins refused for a will: %v, want 2", n)
	}
	// A will on the device's own up topic is refused all the same: IoTDA
	// devices never set one.
	pk := connectPacket("d1", "secret-1", 4)
	pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, iotda.UpTopic("d1"), []byte("{}")
	if _, code := rawConnect(t, e.b.Addr("mqtt"), nil, pk); code != 0x05 {
		t.Errorf("will on its own up topic: CONNACK %#x, want 0x05", code)
	}
}

// TestRetainedAndQoS2StayWithTheDevice (issue 18 item 1, the other paths):
// retained publishes and QoS 2 publishes, on another device's topics or the
// device's own, reach no other client and are never kept for a later one.
func TestRetainedAndQoS2StayWithTheDevice(t *testing.T) {
	e := newEnv(t)
	attacker, err := e.connect(t, "d1", "secret-1", "", 60*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.rec.next(t) // d1 connected
	forged := iotda.EncodeUpgrade("d_2", false, iotda.UpgradeParas{Version: "6.6.6", URL: "http://evil.example/fw", FileSize: 1, FileName: "fw"}, epoch)
	// Retained, on its own topics (QoS 1: acknowledged, not kept).
	for _, topic := range []string{iotda.DownTopic("d1"), "$oc/devices/d1/sys/messages/up"} {
		if tok := attacker.Publish(topic, 1, true, forged); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("retained publish on %s: %v", topic, tok.Error())
		}
	}
	// Retained QoS 0 on the victim's down topic: dropped by the ACL.
	attacker.Publish(iotda.DownTopic("d_2"), 0, true, forged).WaitTimeout(10 * time.Second)
	// QoS 2 on the victim's down topic: the ACL closes the connection.
	attacker.Publish(iotda.DownTopic("d_2"), 2, true, forged).WaitTimeout(2 * time.Second)
	if got := e.rec.next(t); got != "d1 disconnected:{}" {
		t.Fatalf("after a QoS 2 publish on another device's topic: %q", got)
	}
	for topic := range e.b.server.Topics.Retained.GetAll() {
		if !strings.HasPrefix(topic, "$SYS/") { // mochi's own broker statistics
			t.Fatalf("a retained message kept on %s", topic)
		}
	}
	// Later subscribers (the victim, and a debugging client of d1) get only
	// the platform's messages.
	for _, c := range []struct{ device, secret, clientID string }{
		{"d_2", "secret-2", ""},
		{"d1", "secret-1", "d1_0_0_" + iotda.NewClientID("d1", epoch).Timestamp},
	} {
		down := make(chan paho.Message, 10)
		cl, err := e.connect(t, c.device, c.secret, c.clientID, 60*time.Second, func(_ paho.Client, m paho.Message) { down <- m })
		if err != nil {
			t.Fatal(err)
		}
		e.rec.next(t) // connected
		if tok := cl.Subscribe("$oc/devices/"+c.device+"/#", 1, nil); !tok.WaitTimeout(10 * time.Second) {
			t.Fatal("subscribe timed out")
		}
		if err := e.b.Send(context.Background(), &messages.Downlink{DeviceId: c.device, Kind: &messages.Downlink_MqttVersionQuery{MqttVersionQuery: &messages.MqttVersionQuery{}}}); err != nil {
			t.Fatal(err)
		}
		if d, _, _ := iotda.DecodeDownlink(waitMsg(t, down).Payload()); d.EventType != iotda.EventVersionQuery {
			t.Fatalf("%s's first message is %+v, not the platform's", c.device, d)
		}
	}
}

// TestConnectTimeout (issue 18 item 3): a socket that sends nothing is
// closed once the CONNECT timeout passes, and counted.
func TestConnectTimeout(t *testing.T) {
	e := newEnvWith(t, func(c *BrokerConfig) { c.ConnectTimeout = time.Second })
	silent := dialFrom(t, e.b.Addr("mqtt"), nil)
	slow := dialFrom(t, e.b.Addr("mqtt"), nil)
	if _, err := slow.Write([]byte{0x10, 100, 0, 4, 'M'}); err != nil { // most of a CONNECT header, then nothing
		t.Fatal(err)
	}
	closedByServer(t, silent, "a silent socket")
	closedByServer(t, slow, "a socket with half a CONNECT")
	pollUntil(t, "two connect timeouts counted", func() bool {
		return metricValue(t, e.reg, "otafleet_mqtt_connections_refused_total", "connect_timeout") == 2
	})
	// A device logging in right away is not affected.
	if _, err := e.connect(t, "d1", "secret-1", "", 60*time.Second, nil); err != nil {
		t.Fatal(err)
	}
}

// TestFirstPacketBounded (issue 18 item 3): a first packet announcing more
// than MaxConnectSize bytes is refused from its fixed header, before the
// broker waits for (or allocates) its body; so is a first packet that is not
// a CONNECT.
func TestFirstPacketBounded(t *testing.T) {
	e := newEnvWith(t, func(c *BrokerConfig) { c.ConnectTimeout = time.Hour })
	big := dialFrom(t, e.b.Addr("mqtt"), nil)
	// CONNECT, remaining length 1 MiB - 1 (varint ff ff 3f), a few bytes.
	if _, err := big.Write([]byte{0x10, 0xff, 0xff, 0x3f, 0, 4, 'M', 'Q', 'T', 'T', 4}); err != nil {
		t.Fatal(err)
	}
	closedByServer(t, big, "a 1 MiB CONNECT")
	just := dialFrom(t, e.b.Addr("mqtt"), nil)
	// One byte over: 0x10, length MaxConnectSize-2 (2-byte varint) is 4 KiB + 1 in all.
	n := MaxConnectSize - 2
	if _, err := just.Write([]byte{0x10, byte(n&0x7f) | 0x80, byte(n >> 7)}); err != nil {
		t.Fatal(err)
	}
	closedByServer(t, just, "a CONNECT of MaxConnectSize+1 bytes")
	pub := dialFrom(t, e.b.Addr("mqtt"), nil)
	if _, err := pub.Write([]byte{0x30, 2, 0, 0}); err != nil { // PUBLISH first
		t.Fatal(err)
	}
	closedByServer(t, pub, "a PUBLISH before CONNECT")
	pollUntil(t, "three first packets counted", func() bool {
		return metricValue(t, e.reg, "otafleet_mqtt_connections_refused_total", "first_packet") == 3
	})
	// A CONNECT under the bound logs in.
	conn, code := rawConnect(t, e.b.Addr("mqtt"), nil, connectPacket("d1", "secret-1", 4))
	if code != 0 {
		t.Fatalf("a proper CONNECT: CONNACK %#x", code)
	}
	conn.Close()
}

// TestConnectionLimits (issue 18 item 3): connections beyond the per-source
// or the total limit are closed at once; a closed connection frees its slot.
func TestConnectionLimits(t *testing.T) {
	e := newEnvWith(t, func(c *BrokerConfig) { c.MaxConnections, c.MaxConnectionsPerSource = 3, 2 })
	addr := e.b.Addr("mqtt")
	from := func(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip)} }
	login := func(ip, device, secret string) net.Conn {
		t.Helper()
		conn, code := rawConnect(t, addr, from(ip), connectPacket(device, secret, 4))
		if code != 0 {
			t.Fatalf("login of %s from %s: CONNACK %#x", device, ip, code)
		}
		return conn
	}
	first := login("127.0.0.1", "d1", "secret-1")
	second := connectPacket("d1", "secret-1", 4)
	second.Connect.ClientIdentifier = "d1_0_0_" + iotda.NewClientID("d1", epoch).Timestamp
	if _, code := rawConnect(t, addr, from("127.0.0.1"), second); code != 0 {
		t.Fatalf("second connection: CONNACK %#x", code)
	}
	closedByServer(t, dialFrom(t, addr, from("127.0.0.1")), "a third connection from one source")
	login("127.0.0.2", "d_2", "secret-2")
	closedByServer(t, dialFrom(t, addr, from("127.0.0.3")), "a fourth connection in all")
	if a, b := metricValue(t, e.reg, "otafleet_mqtt_connections_refused_total", "max_connections_per_source"),
		metricValue(t, e.reg, "otafleet_mqtt_connections_refused_total", "max_connections"); a != 1 || b != 1 {
		t.Fatalf("refused: %v per source, %v in all; want 1 and 1", a, b)
	}
	// Closing one frees its slot.
	first.Close()
	pollUntil(t, "the closed connection's slot", func() bool {
		e.b.limits.mu.Lock()
		defer e.b.limits.mu.Unlock()
		return e.b.limits.total == 2
	})
	login("127.0.0.3", "d1", "secret-1")
}

// TestRequireTimestamp (issue 18 item 5): with RequireTimestamp a sign type
// 0 client ID is refused as a bad client ID (0x02), even with the right
// password; sign type 1 logs in.
func TestRequireTimestamp(t *testing.T) {
	e := newEnvWith(t, func(c *BrokerConfig) { c.RequireTimestamp = true })
	ts := iotda.NewClientID("d1", epoch).Timestamp
	if _, err := e.connect(t, "d1", "secret-1", "d1_0_0_"+ts, 60*time.Second, nil); err == nil || !strings.Contains(err.Error(), "identifier rejected") {
		t.Fatalf("sign type 0: %v, want identifier rejected", err)
	}
	if _, err := e.connect(t, "d1", "secret-1", "", 60*time.Second, nil); err != nil {
		t.Fatalf("sign type 1: %v", err)
	}
	if n := metricValue(t, e.reg, "otafleet_mqtt_logins_refused_total", "sign_type"); n != 1 {
		t.Fatalf("sign_type refusals %v", n)
	}
}

// TestLoginThrottle (issue 18 item 5): after its allowance of failed logins
// a device is refused with 0x05 without its password being checked, even
// the right one, until the allowance refills; so is a source address after
// its own allowance, for any device.
func TestLoginThrottle(t *testing.T) {
	try := func(t *testing.T, e *env, device, secret, want string) {
		t.Helper()
		_, err := e.connect(t, device, secret, "", 60*time.Second, nil)
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Fatalf("login of %s: %v, want %q", device, err, want)
		}
	}
	t.Run("device", func(t *testing.T) {
		e := newEnvWith(t, func(c *BrokerConfig) { c.LoginFailuresPerDevice = 3 })
		for range 3 {
			try(t, e, "d1", "guess", "bad user name or password")
		}
		try(t, e, "d1", "secret-1", "not Authorized") // the right password is not even checked
		try(t, e, "d_2", "secret-2", "")              // another device from the same source logs in
		e.clk.Advance(LoginFailureWindow / 3)         // one failure's worth refills
		try(t, e, "d1", "secret-1", "")
		if a, b := metricValue(t, e.reg, "otafleet_mqtt_logins_refused_total", "throttled"),
			metricValue(t, e.reg, "otafleet_mqtt_logins_refused_total", "password"); a != 1 || b != 3 {
			t.Fatalf("refused: %v throttled, %v passwords; want 1 and 3", a, b)
		}
	})
	t.Run("source", func(t *testing.T) {
		e := newEnvWith(t, func(c *BrokerConfig) { c.LoginFailuresPerSource = 4 })
		for _, d := range []string{"ghost", "ghost2", "d1", "d_2"} { // unknown devices and wrong passwords
			try(t, e, d, "guess", "bad user name or password")
		}
		try(t, e, "d_2", "secret-2", "not Authorized")
		if n := metricValue(t, e.reg, "otafleet_mqtt_logins_refused_total", "unknown_device"); n != 2 {
			t.Fatalf("unknown_device %v, want 2", n)
		}
	})
}

// TestUplinkRateLimit (issue 18 item 7): a device's publishes beyond its
// bucket are neither acknowledged nor handed to the engine, and counted;
// the bucket refills with the clock.
func TestUplinkRateLimit(t *testing.T) {
	e := newEnvWith(t, func(c *BrokerConfig) { c.UplinkRate, c.UplinkBurst = 1, 3 })
	cl, err := e.connect(t, "d1", "secret-1", "", 60*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.rec.next(t) // connected
	report := func(v string) paho.Token {
		return cl.Publish(iotda.UpTopic("d1"), 1, false, iotda.EncodeVersionReport("d1", &v, nil, epoch))
	}
	for _, v := range []string{"a", "b", "c"} {
		if tok := report(v); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("report %s within the burst: %v", v, tok.Error())
		}
	}
	refused := report("refused")
	pollUntil(t, "the refused publish counted", func() bool {
		return metricValue(t, e.reg, "otafleet_mqtt_uplinks_refused_total", "rate_limited") == 1
	})
	e.clk.Advance(time.Second)
	if tok := report("after"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("the publish after the bucket refilled: %v", tok.Error())
	}
	// The broker handles a connection's packets in order, and paho its
	// acknowledgements: with the later one acknowledged, the refused one
	// would have been by now.
	select {
	case <-refused.Done():
		t.Fatal("the publish beyond the bucket was acknowledged")
	default:
	}
	var got []string
	for range 4 {
		got = append(got, e.rec.next(t))
	}
	if want := `d1 version_reported:{fw_version:"a"} d1 version_reported:{fw_version:"b"} d1 version_reported:{fw_version:"c"} d1 version_reported:{fw_version:"after"}`; strings.Join(got, " ") != want {
		t.Fatalf("delivered %q, want %q", got, want)
	}
	if n := metricValue(t, e.reg, "otafleet_mqtt_uplinks_refused_total", "rate_limited"); n != 1 {
		t.Fatalf("rate_limited %v, want 1", n)
	}
}

// TestUplinkServiceCap (issue 18 item 7): a publish of more than
// iotda.MaxServices services (up to the 12,600 of a 1 MiB publish) hands
// nothing to the engine and is counted; the device's next report arrives.
func TestUplinkServiceCap(t *testing.T) {
	e := newEnv(t)
	cl, err := e.connect(t, "d1", "secret-1", "", 60*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.rec.next(t) // connected
	fw := "1.0"
	one := string(iotda.EncodeVersionReport("d1", &fw, nil, epoch))
	svc := one[strings.Index(one, "[")+1 : strings.LastIndex(one, "]")]
	flood := func(n int) []byte {
		return []byte(`{"services":[` + strings.TrimSuffix(strings.Repeat(svc+",", n), ",") + `]}`)
	}
	// Each flood is followed by a proper report, which must be the next
	// input: nothing of the flood reached the engine.
	for i, n := range []int{iotda.MaxServices + 1, iotda.MaxPayload / (len(svc) + 1)} {
		publish(t, cl, iotda.UpTopic("d1"), flood(n))
		v := fmt.Sprintf("%d.0", i+2)
		publish(t, cl, iotda.UpTopic("d1"), iotda.EncodeVersionReport("d1", &v, nil, epoch))
		if got, want := e.rec.next(t), `d1 version_reported:{fw_version:"`+v+`"}`; got != want {
			t.Fatalf("first input after %d services: %q, want %q", n, got, want)
		}
	}
	if n := metricValue(t, e.reg, "otafleet_mqtt_uplinks_refused_total", "too_many_services"); n != 2 {
		t.Fatalf("too_many_services %v, want 2", n)
	}
}

// TestWritesPendingBounded (issue 18 item 3): each client's queue of
// outgoing packets holds what an OTA device needs, not mochi's 8,192 slots.
func TestWritesPendingBounded(t *testing.T) {
	e := newEnv(t)
	if n := e.b.server.Options.Capabilities.MaximumClientWritesPending; n != 16 {
		t.Fatalf("MaximumClientWritesPending %d, want 16", n)
	}
}

// TestReadBufferSmall (issue 21): a connected device's read buffer is the
// front end's small read-ahead, not mochi's per-client buffer (2 KiB by
// default), which the broker's clients do not have.
func TestReadBufferSmall(t *testing.T) {
	e := newEnv(t)
	if _, err := e.connect(t, "d1", "secret-1", "", 60*time.Second, nil); err != nil {
		t.Fatal(err)
	}
	e.rec.next(t) // connected
	e.b.mu.Lock()
	defer e.b.mu.Unlock()
	if len(e.b.conns) != 1 {
		t.Fatalf("%d connections", len(e.b.conns))
	}
	for c := range e.b.conns {
		if n := len(c.buf); n != readBufferSize || n > 512 {
			t.Fatalf("read-ahead of %d bytes, want %d", n, readBufferSize)
		}
		if bconn := reflect.ValueOf(c.cl.Net).FieldByName("bconn"); !bconn.IsValid() || !bconn.IsNil() {
			t.Fatalf("mochi's client has a read buffer (%v)", bconn)
		}
	}
}

// TestDownlinksWithoutTopicIndex (issue 21): a connected device costs no
// subscription in mochi's topic index, and still gets its downlinks on its
// down topic, QoS 1, in the order they were sent; each is acknowledged
// (mochi's inflight count returns to zero). A packet larger than the read
// buffer arrives whole.
func TestDownlinksWithoutTopicIndex(t *testing.T) {
	e := newEnv(t)
	down := make(chan paho.Message, maxWritesPending)
	cl, err := e.connect(t, "d1", "secret-1", "", 60*time.Second, func(_ paho.Client, m paho.Message) { down <- m })
	if err != nil {
		t.Fatal(err)
	}
	e.rec.next(t) // connected
	subs := e.b.server.Topics.Subscribers(iotda.DownTopic("d1"))
	if n := len(subs.Subscriptions) + len(subs.InlineSubscriptions); n != 0 {
		t.Fatalf("%d subscriptions in the topic index for the down topic", n)
	}
	const n = maxWritesPending
	for i := range n {
		job := &messages.Job{TaskId: "t1", Attempt: 1, Package: &messages.Package{PackageId: "k1", Version: fmt.Sprintf("v%d", i), Size: 1, FileName: "f"}}
		if err := e.b.Send(context.Background(), &messages.Downlink{DeviceId: "d1", Kind: &messages.Downlink_MqttUpgrade{MqttUpgrade: &messages.MqttUpgrade{Job: job}}}); err != nil {
			t.Fatal(err)
		}
		e.rec.next(t) // download offered
	}
	for i := range n {
		m := waitMsg(t, down)
		d, ok, err := iotda.DecodeDownlink(m.Payload())
		if err != nil || !ok || m.Topic() != iotda.DownTopic("d1") || m.Qos() != 1 || d.Upgrade.Version != fmt.Sprintf("v%d", i) {
			t.Fatalf("downlink %d: %s qos %d %s %v", i, m.Topic(), m.Qos(), m.Payload(), err)
		}
	}
	pollUntil(t, "every downlink acknowledged", func() bool { return atomic.LoadInt64(&e.b.server.Info.Inflight) == 0 })
	// An uplink longer than the read buffer.
	pr, long := 50, strings.Repeat("x", 2*readBufferSize)
	publish(t, cl, iotda.UpTopic("d1"), iotda.EncodeProgress("d1", iotda.Progress{Progress: &pr, Version: "v1", Description: long}, epoch))
	if got := e.rec.next(t); !strings.Contains(got, long) {
		t.Fatalf("long report: %q", got)
	}
}

// syncBuffer is a log sink for the broker's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRefusalsLoggedAtABoundedRate (issue 18 item 5): a run of failed logins
// writes at most a burst of log lines, all counted in the metric; the next
// line after a pause says how many were left out.
func TestRefusalsLoggedAtABoundedRate(t *testing.T) {
	var out syncBuffer
	e := newEnvWith(t, func(c *BrokerConfig) {
		c.LoginFailuresPerDevice, c.LoginFailuresPerSource = -1, -1 // no throttle: every attempt fails on its password
		c.Logger = slog.New(slog.NewTextHandler(&out, nil))
	})
	const attempts = logBurst + 5
	for range attempts {
		if _, err := e.connect(t, "d1", "guess", "", 60*time.Second, nil); err == nil {
			t.Fatal("a wrong password logged in")
		}
	}
	if n := strings.Count(out.String(), "connection refused"); n != logBurst {
		t.Fatalf("%d failed logins wrote %d lines, want %d", attempts, n, logBurst)
	}
	if n := metricValue(t, e.reg, "otafleet_mqtt_logins_refused_total", "password"); n != attempts {
		t.Fatalf("counted %v, want %d", n, attempts)
	}
	e.clk.Advance(time.Second)
	if _, err := e.connect(t, "d1", "guess", "", 60*time.Second, nil); err == nil {
		t.Fatal("a wrong password logged in")
	}
	if !strings.Contains(out.String(), "suppressed_before=5") {
		t.Fatalf("the line after the pause does not count the 5 left out:\n%s", out.String()[max(0, len(out.String())-400):])
	}
}

// TestUplinkAckedAsMochiAcks (issue 21): the front end handles a publish on
// the device's up topic itself (Broker.uplink) and answers it with the very
// PUBACK mochi sends for a publish it processes (here one on another of the
// device's own topics, which the hook ignores), in MQTT 3.1.1 and 5 (with a
// user property, which mochi's PUBACK repeats); only the up topic's reaches
// the engine, and mochi's counters count both.
func TestUplinkAckedAsMochiAcks(t *testing.T) {
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			e := newEnv(t)
			conn, code := rawConnect(t, e.b.Addr("mqtt"), nil, connectPacket("d1", "secret-1", v))
			if code != 0 {
				t.Fatalf("CONNACK code %#x", code)
			}
			if v == 5 { // the CONNACK's properties
				var n [1]byte
				if _, err := io.ReadFull(conn, n[:]); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(conn, make([]byte, n[0])); err != nil {
					t.Fatal(err)
				}
			}
			if got := e.rec.next(t); got != "d1 connected:{}" {
				t.Fatalf("input %q", got)
			}
			fw := "1.0"
			ack := func(topic string, id uint16) []byte {
				t.Helper()
				pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: v,
					TopicName: topic, PacketID: id, Payload: iotda.EncodeVersionReport("d1", &fw, nil, epoch)}
				if v == 5 {
					pk.Properties.User = []packets.UserProperty{{Key: "k", Val: "v"}}
				}
				var buf bytes.Buffer
				if err := pk.PublishEncode(&buf); err != nil {
					t.Fatal(err)
				}
				if _, err := conn.Write(buf.Bytes()); err != nil {
					t.Fatal(err)
				}
				hdr := make([]byte, 2)
				if _, err := io.ReadFull(conn, hdr); err != nil {
					t.Fatalf("reading the PUBACK: %v", err)
				}
				body := make([]byte, hdr[1])
				if _, err := io.ReadFull(conn, body); err != nil {
					t.Fatalf("reading the PUBACK: %v", err)
				}
				if hdr[0] != 0x40 || len(body) < 2 || binary.BigEndian.Uint16(body) != id {
					t.Fatalf("answer % x % x, want a PUBACK of packet %d", hdr, body, id)
				}
				binary.BigEndian.PutUint16(body, 0)
				return append(hdr, body...)
			}
			before := atomic.LoadInt64(&e.b.server.Info.MessagesReceived)
			ours := ack(iotda.UpTopic("d1"), 7)
			if got := e.rec.next(t); got != `d1 version_reported:{fw_version:"1.0"}` {
				t.Fatalf("input %q", got)
			}
			mochis := ack("$oc/devices/d1/sys/messages/up", 8)
			if !bytes.Equal(ours, mochis) {
				t.Errorf("PUBACK of an uplink % x, mochi's % x", ours, mochis)
			}
			// Both count a publish after writing its PUBACK; a connection's
			// packets are handled in order, so once a PINGREQ is answered
			// the publishes before it are counted.
			if _, err := conn.Write([]byte{0xc0, 0}); err != nil {
				t.Fatal(err)
			}
			pong := make([]byte, 2)
			if _, err := io.ReadFull(conn, pong); err != nil || pong[0] != 0xd0 {
				t.Fatalf("PINGRESP % x, %v", pong, err)
			}
			if n := atomic.LoadInt64(&e.b.server.Info.MessagesReceived) - before; n != 2 {
				t.Errorf("mochi counted %d publishes received, want 2", n)
			}
			select {
			case got := <-e.rec.ch:
				t.Errorf("the publish on another topic reached the engine: %q", got)
			default:
			}
		})
	}
}
