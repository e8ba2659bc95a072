package lwm2m_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	dtlsnet "github.com/pion/dtls/v3/pkg/net"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	"github.com/plgd-dev/go-coap/v3/options"

	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport/download"
	"github.com/otafleet/otafleet/transport/lwm2m"
)

// TestRebootRegistrationAnsweredFirst (issue 20, item 7): a device that
// rebooted registers from a new address while the server still observes
// three resources at its old, dead one. The new registration is answered
// within CoAP's ACK_TIMEOUT (2 s), not after the cancellations of the old
// observations, which wait for the dead address up to a second each.
func TestRebootRegistrationAnsweredFirst(t *testing.T) {
	e := newEnv(t)
	old := dial(t, e)
	if res, err := old.register(t, "ep=d1&lt=600", links); err != nil || res.Code() != codes.Created {
		t.Fatalf("register: %v %v", res, err)
	}
	e.rec.next(t)
	paths := []string{messages.PathFirmwareVersion, messages.PathFotaState, messages.PathPCPUplink}
	for _, p := range paths {
		old.set(p, resource{message.TextPlain, []byte("0")})
		if err := e.srv.Send(context.Background(), &messages.Downlink{DeviceId: "d1", Kind: &messages.Downlink_Lwm2MObserve{Lwm2MObserve: &messages.Lwm2MObserve{Path: p}}}); err != nil {
			t.Fatal(err)
		}
		e.rec.next(t)
	}
	waitDevice(t, old, func() bool { return len(old.obsToken) == len(paths) })
	old.conn.Close() // the reboot: nothing answers at the old address

	rebooted := dial(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second) // ACK_TIMEOUT
	defer cancel()
	req, err := rebooted.conn.NewPostRequest(ctx, "/rd", message.AppLinkFormat, strings.NewReader(links))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"ep=d1", "lt=600"} {
		req.AddOptionString(message.URIQuery, q)
	}
	res, err := rebooted.conn.Do(req)
	if err != nil || res.Code() != codes.Created {
		t.Fatalf("the rebooted device's registration within 2 s: %v %v", res, err)
	}
	if got := e.rec.next(t); got != "d1 connected:{}" {
		t.Fatalf("after the reboot: %q", got)
	}
}

// TestDTLSCipherSuites (issue 20, item 9): a DTLS client offering only
// one of spec 3.1's cipher suites, TLS_PSK_WITH_AES_128_CCM_8 or
// TLS_PSK_WITH_AES_128_CBC_SHA256, completes its handshake and registers.
func TestDTLSCipherSuites(t *testing.T) {
	e := newEnv(t)
	for _, suite := range []piondtls.CipherSuiteID{piondtls.TLS_PSK_WITH_AES_128_CCM_8, piondtls.TLS_PSK_WITH_AES_128_CBC_SHA256} {
		d := &device{values: map[string]resource{}, writes: map[string]string{}, obsToken: map[string]message.Token{}}
		router := mux.NewRouter()
		router.DefaultHandleFunc(d.handle)
		conn, err := dialPSKSuite(e, "d3", []byte("psk-of-d3"), suite, options.WithMux(router))
		if err != nil {
			t.Fatalf("%v: handshake: %v", suite, err)
		}
		d.conn = conn
		if res, err := d.register(t, "ep=d3&lt=600", links); err != nil || res.Code() != codes.Created {
			t.Fatalf("%v: register: %v %v", suite, res, err)
		}
		if got := e.rec.next(t); got != "d3 connected:{}" {
			t.Fatalf("%v: %q", suite, got)
		}
		conn.Close()
	}
}

// records is a slog.Handler that hands every record to a channel.
type records chan slog.Record

func (records) Enabled(context.Context, slog.Level) bool { return true }
func (r records) Handle(_ context.Context, rec slog.Record) error {
	select {
	case r <- rec.Clone():
	default:
	}
	return nil
}
func (r records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r records) WithGroup(string) slog.Handler      { return r }

// TestDTLSHandshakeFailureLogged (issue 20, item 7): a device with a wrong
// PSK leaves a warning naming its PSK identity and its address.
func TestDTLSHandshakeFailureLogged(t *testing.T) {
	logs := make(records, 1000)
	e := newEnv(t, func(c *lwm2m.Config) { c.Logger, c.HandshakeTimeout = slog.New(logs), time.Second })
	raddr, err := net.ResolveUDPAddr("udp", e.srv.DTLSAddr())
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := piondtls.Client(dtlsnet.PacketConnFromConn(pc), raddr, &piondtls.Config{
		PSK:             func([]byte) ([]byte, error) { return []byte("not-the-psk-of-d3"), nil },
		PSKIdentityHint: []byte("d3"),
		CipherSuites:    []piondtls.CipherSuiteID{piondtls.TLS_PSK_WITH_AES_128_CCM_8},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() { _ = dc.HandshakeContext(ctx) }() // it fails, or waits for the server that gave up
	for {
		select {
		case rec := <-logs:
			if rec.Message != "lwm2m: DTLS handshake failed" {
				continue
			}
			attrs := map[string]string{}
			rec.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value.String(); return true })
			if rec.Level != slog.LevelWarn || attrs["identity"] != "d3" || attrs["peer"] != pc.LocalAddr().String() {
				t.Fatalf("logged %v %q %v; want a warning naming identity d3 and peer %s", rec.Level, rec.Message, attrs, pc.LocalAddr())
			}
			return
		case <-ctx.Done():
			t.Fatal("no log line of the failed handshake")
		}
	}
}

// TestBlock2Sizes (issue 20, item 10): a GET without Block2 gets block 0
// of 512 bytes (spec 3.7's default) with the More flag; a client asking
// for SZX 7 (BERT, 1024 bytes on TCP) gets 1024-byte blocks, numbered in
// 1024 bytes as it asked, instead of 4.02.
func TestBlock2Sizes(t *testing.T) {
	e := newEnv(t)
	d := dial(t, e)
	tok, _ := e.dl.Mint(download.Grant{TaskID: "t1", DeviceID: "d1", Attempt: 1, PackageID: "fw"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := d.conn.NewGetRequest(ctx, "/fw/fw")
	if err != nil {
		t.Fatal(err)
	}
	req.AddOptionString(message.URIQuery, "t="+tok)
	res, err := d.conn.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body())
	v, verr := res.Options().GetUint32(message.Block2)
	if res.Code() != codes.Content || verr != nil || v != 0<<4|1<<3|5 || !bytes.Equal(b, e.content[:512]) {
		t.Fatalf("GET without Block2: %v, Block2 %#x %v, %d bytes; want 2.05, block 0 of 512 bytes with More", res.Code(), v, verr, len(b))
	}
	res, b = getBlock(t, d, "/fw/fw", 2, 7, tok)
	v, verr = res.Options().GetUint32(message.Block2)
	if res.Code() != codes.Content || verr != nil || v != 2<<4|1<<3|6 || !bytes.Equal(b, e.content[2048:3072]) {
		t.Fatalf("block 2 with SZX 7: %v, Block2 %#x %v, %d bytes; want 2.05, block 2 of 1024 bytes with More", res.Code(), v, verr, len(b))
	}
}

// TestBytesServedCounted (issue 20, item 7): the bytes reported served to
// a download (the timeline's "bytes served" notes) are those of the blocks
// answered: a client that asks for block 0, then resumes at block 15, has
// not been served blocks 1 to 14; a block asked again counts once; a
// refused request counts nothing.
func TestBytesServedCounted(t *testing.T) {
	e := newEnv(t)
	d := dial(t, e)
	tok, _ := e.dl.Mint(download.Grant{TaskID: "t1", DeviceID: "d1", Attempt: 1, PackageID: "fw"})
	got := map[int64][]byte{} // what the client received, by offset
	for _, num := range []uint32{0, 0, 15, 16, 17, 17, 18, 19} {
		res, b := getBlock(t, d, "/fw/fw", num, 5, tok)
		if res.Code() != codes.Content {
			t.Fatalf("block %d: %v", num, res.Code())
		}
		got[int64(num)*512] = b
	}
	if res, _ := getBlock(t, d, "/fw/fw", 3, 5, "forged"); res.Code() != codes.Unauthorized {
		t.Fatalf("a forged token: %v", res.Code())
	}
	var want int64
	for _, b := range got {
		want += int64(len(b))
	}
	var total int64
	for total < want {
		select {
		case s := <-e.served:
			off, n := s[0], s[1]
			for o := off; o < off+n; o += 512 {
				if _, ok := got[o]; !ok {
					t.Fatalf("reported bytes %d-%d served; the block at %d was never asked for", off, off+n-1, o)
				}
			}
			total += n
		default:
			t.Fatalf("reported %d bytes served of the %d answered", total, want)
		}
	}
	select {
	case s := <-e.served:
		t.Fatalf("reported more bytes served (%v) than the %d answered", s, want)
	default:
	}
}
