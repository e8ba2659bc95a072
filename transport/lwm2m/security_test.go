package lwm2m_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	"github.com/plgd-dev/go-coap/v3/options"

	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport/lwm2m"
)

// dialDevicePSK is dial over DTLS: a hand-written device with identity id
// and key.
func dialDevicePSK(t *testing.T, e *env, id string, key []byte) *device {
	t.Helper()
	d := &device{values: map[string]resource{}, writes: map[string]string{}, obsToken: map[string]message.Token{}}
	router := mux.NewRouter()
	router.DefaultHandleFunc(d.handle)
	conn, err := dialPSK(e, id, key, options.WithMux(router))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d.conn = conn
	return d
}

// delivered is what the engine was told so far, one input a line.
func (e *env) delivered() string {
	e.rec.mu.Lock()
	defer e.rec.mu.Unlock()
	return strings.Join(e.rec.got, "\n")
}

// TestRegistrationNeedsAnLwM2MProduct: only devices of an LwM2M product
// register; a device of an MQTT product is refused as an unknown endpoint
// is (4.03) and is never reported online. In a product of security mode
// PSK no device registers over plain CoAP, with or without a PSK, while
// over DTLS it does.
func TestRegistrationNeedsAnLwM2MProduct(t *testing.T) {
	e := newEnv(t)
	d := dial(t, e)
	for _, ep := range []string{"m1", "s1", "s2"} {
		res, err := d.register(t, "ep="+ep+"&lt=60", links)
		if err != nil || res.Code() != codes.Forbidden {
			t.Errorf("%s over plain CoAP: %v %v, want 4.03", ep, res, err)
		}
	}
	// The MQTT device's CoAP de-registration of a guessed ID is unknown too.
	if res, err := d.conn.Delete(context.Background(), "/rd/0000000000000000"); err != nil || res.Code() != codes.NotFound {
		t.Errorf("DELETE of an unknown registration: %v %v", res, err)
	}
	s1 := dialDevicePSK(t, e, "s1", []byte("psk-of-s1"))
	if res, err := s1.register(t, "ep=s1&lt=60", links); err != nil || res.Code() != codes.Created {
		t.Fatalf("s1 over DTLS: %v %v", res, err)
	}
	if got := e.rec.next(t); got != "s1 connected:{}" {
		t.Fatalf("got %q", got)
	}
	if got := e.delivered(); got != "s1 connected:{}" {
		t.Fatalf("delivered:\n%s", got)
	}
}

// TestDTLSRegistrationStaysOnDTLS: a registration made over DTLS is updated
// and de-registered only over DTLS by its own identity: a plain-CoAP peer
// that knows its location, or another DTLS device, is refused (4.03) and
// the device stays online.
func TestDTLSRegistrationStaysOnDTLS(t *testing.T) {
	e := newEnv(t)
	d3 := dialDevicePSK(t, e, "d3", []byte("psk-of-d3"))
	if res, err := d3.register(t, "ep=d3&lt=60", links); err != nil || res.Code() != codes.Created {
		t.Fatalf("d3 over DTLS: %v %v", res, err)
	}
	if got := e.rec.next(t); got != "d3 connected:{}" {
		t.Fatalf("got %q", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	plain := dial(t, e)
	d4 := dialDevicePSK(t, e, "d4", []byte("psk-of-d4"))
	for name, c := range map[string]*device{"plain CoAP": plain, "d4's DTLS session": d4} {
		if res, err := c.conn.Post(ctx, d3.loc, message.TextPlain, nil, message.Option{ID: message.URIQuery, Value: []byte("lt=86400")}); err != nil || res.Code() != codes.Forbidden {
			t.Errorf("update of d3's registration over %s: %v %v, want 4.03", name, res, err)
		}
		if res, err := c.conn.Delete(ctx, d3.loc); err != nil || res.Code() != codes.Forbidden {
			t.Errorf("de-registration of d3 over %s: %v %v, want 4.03", name, res, err)
		}
	}
	// Still registered: the device's own update and a downlink work, and
	// the engine heard nothing of the refused requests.
	if res, err := d3.conn.Post(ctx, d3.loc, message.TextPlain, nil); err != nil || res.Code() != codes.Changed {
		t.Fatalf("d3's own update: %v %v", res, err)
	}
	if got := e.rec.next(t); got != "d3 uplink:{registration_update:true}" {
		t.Fatalf("after d3's update: %q", got)
	}
	d3.set("/3/0/3", resource{message.TextPlain, []byte("1.0")})
	if err := e.srv.Send(ctx, &messages.Downlink{DeviceId: "d3", Kind: &messages.Downlink_Lwm2MRead{Lwm2MRead: &messages.Lwm2MRead{Path: "/3/0/3"}}}); err != nil {
		t.Fatal(err)
	}
	if got := e.rec.next(t); got != `d3 version_reported:{fw_version:"1.0"} no_ack:true` {
		t.Fatalf("read: %q", got)
	}
	if got := e.delivered(); strings.Contains(got, "disconnected") {
		t.Fatalf("delivered:\n%s", got)
	}
	// The lifetime was not changed by the refused update: it ends at 60 s.
	e.clk.Advance(61 * time.Second)
	if got := e.rec.next(t); got != "d3 disconnected:{}" {
		t.Fatalf("after the lifetime: %q", got)
	}
}

// TestPlainRegistrationStaysOnPlain: a DTLS session cannot take over a
// plain-CoAP registration either.
func TestPlainRegistrationStaysOnPlain(t *testing.T) {
	e := newEnv(t)
	d1 := dial(t, e)
	if res, err := d1.register(t, "ep=d1&lt=60", links); err != nil || res.Code() != codes.Created {
		t.Fatalf("d1: %v %v", res, err)
	}
	e.rec.next(t)
	d3 := dialDevicePSK(t, e, "d3", []byte("psk-of-d3"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if res, err := d3.conn.Delete(ctx, d1.loc); err != nil || res.Code() != codes.Forbidden {
		t.Errorf("de-registration of d1 over DTLS: %v %v, want 4.03", res, err)
	}
	if res, err := d1.conn.Delete(ctx, d1.loc); err != nil || res.Code() != codes.Deleted {
		t.Errorf("d1's own de-registration: %v %v", res, err)
	}
	if got := e.rec.next(t); got != "d1 disconnected:{}" {
		t.Fatalf("got %q", got)
	}
}

// TestDTLSPackageURI: a device registered over DTLS gets a coaps:// Package
// URI on the DTLS listener, downloads the package block-wise over its DTLS
// session, and its token is refused over plain CoAP.
func TestDTLSPackageURI(t *testing.T) {
	e := newEnv(t)
	d3 := dialDevicePSK(t, e, "d3", []byte("psk-of-d3"))
	if res, err := d3.register(t, "ep=d3&lt=600", links); err != nil || res.Code() != codes.Created {
		t.Fatalf("d3 over DTLS: %v %v", res, err)
	}
	e.rec.next(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.srv.Send(ctx, &messages.Downlink{DeviceId: "d3", Kind: &messages.Downlink_Lwm2MWritePackageUri{Lwm2MWritePackageUri: &messages.Lwm2MWritePackageUri{Job: &messages.Job{
		TaskId: "t1", Attempt: 1, Package: &messages.Package{PackageId: "fw", Version: "2.0"}}}}}); err != nil {
		t.Fatal(err)
	}
	wantOffered(t, e.rec.next(t), "d3", d3)
	if got := e.rec.next(t); got != `d3 lwm2m_response:{op:LWM2M_OP_WRITE path:"/5/0/1" success:true code:"2.04"} no_ack:true` {
		t.Fatalf("package URI write: %q", got)
	}
	d3.mu.Lock()
	uri := d3.writes["/5/0/1"]
	d3.mu.Unlock()
	prefix := "coaps://" + e.srv.DTLSAddr() + "/fw/fw/t="
	if !strings.HasPrefix(uri, prefix) {
		t.Fatalf("package URI %q, want %s...", uri, prefix)
	}
	tok := strings.TrimPrefix(uri, prefix) // a handle: the query form carries it too
	get := func(d *device, num uint32) (codes.Code, []byte, bool) {
		t.Helper()
		req, err := d.conn.NewGetRequest(ctx, "/fw/fw")
		if err != nil {
			t.Fatal(err)
		}
		req.AddOptionString(message.URIQuery, "t="+tok)
		buf := make([]byte, 4)
		n, _ := message.EncodeUint32(buf, num<<4|5) // 512-byte blocks, as LiteOS asks
		req.AddOptionBytes(message.Block2, buf[:n])
		res, err := d.conn.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body())
		v, _ := res.Options().GetUint32(message.Block2)
		return res.Code(), b, v&8 != 0
	}
	var all []byte
	for num := uint32(0); ; num++ {
		c, b, more := get(d3, num)
		if c != codes.Content {
			t.Fatalf("block %d over DTLS: %v", num, c)
		}
		all = append(all, b...)
		if !more {
			break
		}
	}
	if sha256.Sum256(all) != e.sum || !bytes.Equal(all, e.content) {
		t.Fatalf("downloaded %d bytes over DTLS, not the package", len(all))
	}
	if c, _, _ := get(dial(t, e), 0); c != codes.Forbidden {
		t.Fatalf("d3's token over plain CoAP: %v, want 4.03", c)
	}
	if c, _, _ := get(dialDevicePSK(t, e, "d4", []byte("psk-of-d4")), 0); c != codes.Forbidden {
		t.Fatalf("d3's token over d4's DTLS session: %v, want 4.03", c)
	}
}

// TestDTLSPublicAddr: the coaps:// URI names Config.DTLSPublicAddr when set,
// and a plain-CoAP device's coap:// URI Config.PublicAddr.
func TestDTLSPublicAddr(t *testing.T) {
	e := newEnv(t, func(c *lwm2m.Config) { c.PublicAddr, c.DTLSPublicAddr = "ota.example.com:5683", "ota.example.com:5684" })
	d3 := dialDevicePSK(t, e, "d3", []byte("psk-of-d3"))
	d1 := dial(t, e)
	for _, d := range []*device{d3, d1} {
		ep := "d3"
		if d == d1 {
			ep = "d1"
		}
		if res, err := d.register(t, "ep="+ep, links); err != nil || res.Code() != codes.Created {
			t.Fatalf("%s: %v %v", ep, res, err)
		}
		e.rec.next(t)
		job := &messages.Job{TaskId: "t1", Attempt: 1, Package: &messages.Package{PackageId: "fw", Version: "2.0"}}
		if err := e.srv.Send(context.Background(), &messages.Downlink{DeviceId: ep, Kind: &messages.Downlink_Lwm2MWritePackageUri{Lwm2MWritePackageUri: &messages.Lwm2MWritePackageUri{Job: job}}}); err != nil {
			t.Fatal(err)
		}
		wantOffered(t, e.rec.next(t), ep, d)
		e.rec.next(t) // the write's answer
	}
	d3.mu.Lock()
	d1.mu.Lock()
	defer d3.mu.Unlock()
	defer d1.mu.Unlock()
	if u := d3.writes["/5/0/1"]; !strings.HasPrefix(u, "coaps://ota.example.com:5684/fw/fw/t=") {
		t.Errorf("d3 (DTLS): %q", u)
	}
	if u := d1.writes["/5/0/1"]; !strings.HasPrefix(u, "coap://ota.example.com:5683/fw/fw/t=") {
		t.Errorf("d1 (plain CoAP): %q", u)
	}
}
