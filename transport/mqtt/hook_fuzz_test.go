package mqtt

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otafleet/otafleet/transport/mqtt/iotda"
)

// FuzzConnectWillACL (issue 18 item 1): any CONNECT packet body, decoded as
// mochi decodes it, goes through checkConnect; a packet with a will is always
// refused with not-authorized (0x05 in MQTT 3.1.1), whatever its will
// topic; an accepted one names its own device as user name; and the topic
// ACL lets a device at no topic of another device, its will topic included.
func FuzzConnectWillACL(f *testing.F) {
	now := epoch.Add(30 * time.Minute)
	add := func(pk packets.Packet, topic string) {
		var buf bytes.Buffer
		if err := pk.ConnectEncode(&buf); err != nil {
			f.Fatal(err)
		}
		_, lenBytes, err := packets.DecodeLength(bytes.NewReader(buf.Bytes()[1:]))
		if err != nil {
			f.Fatal(err)
		}
		body := buf.Bytes()[1+lenBytes:]
		f.Add(body, topic, false)
		f.Add(body, topic, true)
	}
	add(connectPacket("d1", "secret-1", 4), iotda.UpTopic("d1"))
	add(connectPacket("d1", "secret-1", 5), iotda.DownTopic("d_2"))
	will := connectPacket("d1", "secret-1", 4)
	will.Connect.WillFlag, will.Connect.WillQos = true, 1
	will.Connect.WillTopic, will.Connect.WillPayload = iotda.DownTopic("d_2"), []byte(`{"services":[]}`)
	add(will, iotda.DownTopic("d_2"))
	will.ProtocolVersion = 5
	will.Connect.WillTopic = iotda.UpTopic("d1")
	add(will, "$oc/devices/d1/#")
	old := connectPacket("d_2", "secret-2", 4)
	old.Connect.ClientIdentifier = "d_2_0_0_2020010100"
	add(old, "$oc/devices/+/sys/events/down")

	f.Fuzz(func(t *testing.T, body []byte, topic string, requireTimestamp bool) {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect, Remaining: len(body)}}
		if err := pk.ConnectDecode(body); err != nil {
			return
		}
		c, r := checkConnect(pk, now, time.Hour, requireTimestamp)
		device := string(pk.Connect.Username)
		if pk.Connect.WillFlag {
			if r == nil || r.reason != loginWill || connackCode(r.code, 4) != packets.Err3NotAuthorized || connackCode(r.code, 5) != packets.ErrNotAuthorized {
				t.Fatalf("a CONNECT with a will (topic %q) was not refused as not authorized: %+v", pk.Connect.WillTopic, r)
			}
		}
		if r != nil {
			if v3 := connackCode(r.code, 4).Code; v3 != 0x02 && v3 != 0x04 && v3 != 0x05 {
				t.Fatalf("refusal %+v answers MQTT 3.1.1 with %#x", r, v3)
			}
		} else {
			if pk.Connect.WillFlag || c.DeviceID != device || device == "" {
				t.Fatalf("accepted %+v as device %q (user name %q)", pk.Connect, c.DeviceID, device)
			}
			if ka := pk.Connect.Keepalive; ka < iotda.MinKeepAlive || ka > iotda.MaxKeepAlive {
				t.Fatalf("accepted keep-alive %d", ka)
			}
			if requireTimestamp && c.SignType != iotda.SignTimestampCheck {
				t.Fatalf("accepted sign type %d with requireTimestamp", c.SignType)
			}
		}
		// The ACL: a device reaches only topics that parse to its own ID.
		for _, tp := range []string{topic, pk.Connect.WillTopic} {
			if ownTopic(device, tp) {
				if id, _, ok := iotda.ParseTopic(tp); !ok || id != device {
					t.Fatalf("device %q may use topic %q", device, tp)
				}
			}
		}
		if id, _, ok := iotda.ParseTopic(topic); ok && id != device && ownTopic(device, iotda.DownTopic(id)) {
			t.Fatalf("device %q may use %q's down topic", device, id)
		}
	})
}

// FuzzFirstPacket: the first-packet guard, fed any bytes in any chunks,
// lets a stream through exactly when mochi would read its first packet as a
// CONNECT of at most MaxConnectSize bytes, fixed header included, with a
// remaining length of at most four bytes (MQTT 1.5.5).
func FuzzFirstPacket(f *testing.F) {
	var buf bytes.Buffer
	pk := connectPacket("d1", "secret-1", 4)
	if err := pk.ConnectEncode(&buf); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes(), uint8(3))
	f.Add([]byte{0x10, 0xff, 0xff, 0x3f, 0}, uint8(1))
	f.Add([]byte{0x10, 0xff, 0x1f}, uint8(2))
	f.Add([]byte{0x30, 2, 0, 0}, uint8(0))
	f.Add([]byte{0x10, 0x80, 0x80, 0x80, 0x80, 0x01}, uint8(1))
	f.Fuzz(func(t *testing.T, stream []byte, chunk uint8) {
		c := &firstPacketConn{max: MaxConnectSize}
		var err error
		for rest := stream; len(rest) > 0 && err == nil; {
			n := min(len(rest), int(chunk)+1)
			err = c.scan(rest[:n])
			rest = rest[n:]
		}
		// What mochi reads: the type, then the remaining length. A stream
		// that ends inside the length says too little to compare.
		want := error(nil)
		if len(stream) > 0 {
			length, lenBytes, lerr := packets.DecodeLength(bytes.NewReader(stream[1:]))
			switch {
			case stream[0]>>4 != 1:
				want = errFirstNotConnect
			case errors.Is(lerr, io.EOF):
				return
			case lerr != nil || lenBytes > 4: // MQTT: at most 4 bytes (mochi is laxer)
				want = errFirstBadLength
			case 1+lenBytes+length > MaxConnectSize:
				want = errFirstTooLarge
			}
		}
		if (err == nil) != (want == nil) {
			t.Fatalf("stream % x in chunks of %d: guard %v, mochi's reading says %v", stream[:min(len(stream), 8)], int(chunk)+1, err, want)
		}
		if err == nil && len(stream) >= 1+5+MaxConnectSize && c.state != firstDone {
			t.Fatalf("the guard is still watching after %d bytes", len(stream))
		}
	})
}

// firstPacketConn needs only the net.Conn it wraps for reads; scan is pure.
var _ net.Conn = (*firstPacketConn)(nil)
