package lwm2m_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
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
	"github.com/plgd-dev/go-coap/v3/udp"
	"github.com/plgd-dev/go-coap/v3/udp/client"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/download"
	"github.com/otafleet/otafleet/transport/lwm2m"
	"github.com/otafleet/otafleet/transport/lwm2m/lwm2mcodec"
	"github.com/otafleet/otafleet/transport/pcp"
)

var epoch = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// recorder is the engine's side: every delivered input as text.
type recorder struct {
	mu  sync.Mutex
	got []string
	ch  chan string
}

func (r *recorder) Deliver(_ context.Context, id string, in *messages.DeviceInput) error {
	s := id + " " + strings.NewReplacer(": ", ":", "{ ", "{", " }", "}").Replace(strings.Join(strings.Fields(prototext.Format(in)), " "))
	r.mu.Lock()
	r.got = append(r.got, s)
	r.mu.Unlock()
	r.ch <- s
	return nil
}

// offered matches a delivered DownloadOffered of job t1#1 (the recorder's
// text of it).
var offered = regexp.MustCompile(`^(\S+) download_offered:\{task_id:"t1" attempt:1 uri:"([^"]*)" token:"([^"]*)"\}$`)

// wantOffered checks that got is the DownloadOffered of job t1#1 for device
// ep: the URI d received in its write of /5/0/1, and the token that URI
// carries.
func wantOffered(t *testing.T, got, ep string, d *device) {
	t.Helper()
	d.mu.Lock()
	uri := d.writes["/5/0/1"]
	d.mu.Unlock()
	m := offered.FindStringSubmatch(got)
	if m == nil || m[1] != ep || m[2] != uri || m[3] == "" || !strings.Contains(uri, m[3]) {
		t.Fatalf("delivered %q; want the DownloadOffered of %s with the URI it received, %q, and its token", got, ep, uri)
	}
}

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

type env struct {
	store   *memstore.Store
	srv     *lwm2m.Server
	rec     *recorder
	clk     *clocktest.Clock
	dl      *download.Server
	content []byte
	sum     [32]byte
	served  chan [3]int64
	// strayClosed receives the peers whose silent, unregistered
	// conversation the server closed.
	strayClosed chan string
}

func newEnv(t *testing.T, tune ...func(*lwm2m.Config)) *env {
	t.Helper()
	ctx := context.Background()
	st := memstore.New()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(st.PutProduct(ctx, persistence.Product{ID: "p", Name: "p", Protocol: persistence.ProtocolLWM2M, SoftwarePCP: true}))
	must(st.CreateDevices(ctx, []persistence.Device{{ID: "d1", ProductID: "p"}, {ID: "d2", ProductID: "p"}, {ID: "d3", ProductID: "p", PSK: []byte("psk-of-d3")},
		{ID: "d4", ProductID: "p", PSK: []byte("psk-of-d4")}}))
	// m1: a device of an MQTT product. s1, s2: devices of an LwM2M product
	// in security mode PSK (s2 without a PSK, as the API would refuse).
	must(st.PutProduct(ctx, persistence.Product{ID: "m", Name: "m", Protocol: persistence.ProtocolMQTT}))
	must(st.PutProduct(ctx, persistence.Product{ID: "s", Name: "s", Protocol: persistence.ProtocolLWM2M, LwM2MSecurity: persistence.LwM2MPSK}))
	must(st.CreateDevices(ctx, []persistence.Device{{ID: "m1", ProductID: "m", Secret: "secret-of-m1"},
		{ID: "s1", ProductID: "s", PSK: []byte("psk-of-s1")}, {ID: "s2", ProductID: "s"}}))
	e := &env{store: st, rec: &recorder{ch: make(chan string, 1000)}, clk: clocktest.New(epoch), served: make(chan [3]int64, 100)}
	e.content = make([]byte, 10_000)
	_, _ = rand.Read(e.content)
	size, sum, err := st.WriteBlob(ctx, "fw", bytes.NewReader(e.content), 1<<20)
	must(err)
	e.sum = sum
	must(st.PutPackage(ctx, persistence.Package{ID: "fw", ProductID: "p", Type: persistence.PackageFirmware, Version: "2.0", FileName: "fw.bin", Size: size, SHA256: sum}))
	key := bytes.Repeat([]byte{7}, 32)
	e.dl, err = download.New(download.Config{Packages: st, Handles: st, Key: key, Clock: e.clk,
		OnServed: func(g download.Grant, off, n, size int64) { e.served <- [3]int64{off, n, size} }})
	must(err)
	cfg := lwm2m.Config{Addr: "127.0.0.1:0", DTLSAddr: "127.0.0.1:0", Devices: st, Packages: st, Tokens: e.dl, Uplinks: e.rec, Clock: e.clk, QueueAwake: 30 * time.Second}
	for _, f := range tune {
		f(&cfg)
	}
	e.srv, err = lwm2m.New(cfg)
	must(err)
	e.strayClosed = make(chan string, 100)
	e.srv.OnStrayClosed(func(peer string) {
		select {
		case e.strayClosed <- peer:
		default:
		}
	})
	e.srv.Start()
	t.Cleanup(func() { e.srv.Close() })
	return e
}

// device is a hand-written LwM2M client: it answers the server's requests
// from a map of path → (content format, body).
type device struct {
	conn *client.Conn
	loc  string

	mu       sync.Mutex
	stray    int // responses that reached the handler (matched no request)
	values   map[string]resource
	writes   map[string]string
	executed []string
	obsToken map[string]message.Token
	pcpDown  [][]byte
}

type resource struct {
	cf   message.MediaType
	body []byte
}

func dial(t *testing.T, e *env) *device {
	t.Helper()
	d := &device{values: map[string]resource{}, writes: map[string]string{}, obsToken: map[string]message.Token{}}
	router := mux.NewRouter()
	router.DefaultHandleFunc(d.handle)
	conn, err := udp.Dial(e.srv.Addr(), options.WithMux(router), options.WithBlockwise(false, blockwise.SZX1024, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d.conn = conn
	return d
}

func (d *device) handle(w mux.ResponseWriter, r *mux.Message) {
	path, _ := r.Path()
	path = "/" + strings.Trim(path, "/")
	d.mu.Lock()
	defer d.mu.Unlock()
	if r.Code() > 31 {
		d.stray++
		return
	}
	switch r.Code() {
	case codes.GET:
		v, ok := d.values[path]
		if !ok {
			_ = w.SetResponse(codes.NotFound, message.TextPlain, nil)
			return
		}
		var opts []message.Option
		if obs, err := r.Observe(); err == nil && obs == 0 {
			d.obsToken[path] = r.Token()
			opts = append(opts, message.Option{ID: message.Observe, Value: []byte{1}})
		}
		_ = w.SetResponse(codes.Content, v.cf, bytes.NewReader(v.body), opts...)
	case codes.PUT:
		var b []byte
		if r.Body() != nil { // an empty write (the reset of object 5) has none
			b, _ = io.ReadAll(r.Body())
		}
		if path == "/19/1/0" {
			d.pcpDown = append(d.pcpDown, b)
		} else {
			d.writes[path] = string(b)
		}
		_ = w.SetResponse(codes.Changed, message.TextPlain, nil)
	case codes.POST:
		d.executed = append(d.executed, path)
		_ = w.SetResponse(codes.Changed, message.TextPlain, nil)
	}
}

func (d *device) set(path string, r resource) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.values[path] = r
}

// notify sends a notification of an observed path.
func (d *device) notify(t *testing.T, path string, seq uint32, cf message.MediaType, body []byte) {
	t.Helper()
	d.mu.Lock()
	tok, ok := d.obsToken[path]
	d.mu.Unlock()
	if !ok {
		t.Fatalf("%s is not observed", path)
	}
	m := d.conn.AcquireMessage(context.Background())
	defer d.conn.ReleaseMessage(m)
	m.SetCode(codes.Content)
	m.SetToken(tok)
	m.SetObserve(seq)
	m.SetContentFormat(cf)
	m.SetBody(bytes.NewReader(body))
	m.SetType(message.Confirmable)
	if err := d.conn.WriteMessage(m); err != nil {
		t.Fatal(err)
	}
}

func (d *device) register(t *testing.T, query string, links string) (*pool.Message, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := d.conn.NewPostRequest(ctx, "/rd", message.AppLinkFormat, strings.NewReader(links))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range strings.Split(query, "&") {
		req.AddOptionString(message.URIQuery, q)
	}
	res, err := d.conn.Do(req)
	if err == nil && res.Code() == codes.Created {
		lp, _ := res.Options().LocationPath()
		d.loc = lp
	}
	return res, err
}

const links = `</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</4/0>,</5/0>,</19/0>,</19/1>`

// TestRegistrationInterface: registration, update, expiry, re-registration
// and de-registration, as the engine hears them and as Presence counts them.
func TestRegistrationInterface(t *testing.T) {
	presence := transport.NewPresence()
	e := newEnv(t, func(c *lwm2m.Config) { c.Presence = presence })
	online := func(want int) {
		t.Helper()
		if got := presence.Counts()["p"]; got != want || presence.Online("d1") != (want == 1) {
			t.Fatalf("presence of product p: %d online (d1: %v), want %d", got, presence.Online("d1"), want)
		}
	}
	d := dial(t, e)
	for _, c := range []struct {
		query string
		links string
		want  codes.Code
	}{
		{"ep=ghost&lt=60&lwm2m=1.1&b=U", links, codes.Forbidden},
		{"lt=60&lwm2m=1.1", links, codes.BadRequest},
		{"ep=d1&lt=abc", links, codes.BadRequest},
		{"ep=d1&b=S", links, codes.BadRequest},
		{"ep=d1&lwm2m=9.9", links, codes.BadRequest},
		{"ep=d1", `</3/0`, codes.BadRequest},
	} {
		res, err := d.register(t, c.query, c.links)
		if err != nil || res.Code() != c.want {
			t.Errorf("register ?%s %q: %v %v, want %v", c.query, c.links, res.Code(), err, c.want)
		}
	}
	res, err := d.register(t, "ep=d1&lt=60&lwm2m=1.1&b=U", links)
	if err != nil || res.Code() != codes.Created || !strings.HasPrefix(d.loc, "/rd/") {
		t.Fatalf("register: %v %v, location %q", res, err, d.loc)
	}
	if got := e.rec.next(t); got != "d1 connected:{}" {
		t.Fatalf("got %q", got)
	}
	online(1) // refused registrations (ghost) counted nothing
	ctx := context.Background()
	res, err = d.conn.Post(ctx, d.loc, message.TextPlain, nil)
	if err != nil || res.Code() != codes.Changed {
		t.Fatalf("update: %v %v", res, err)
	}
	// An update is delivered as such: after an Execute it is the reboot
	// cue of spec 3.3 (issue 20 item 4), which the device machine decides on.
	if got := e.rec.next(t); got != "d1 uplink:{registration_update:true}" {
		t.Fatalf("after the update: %q", got)
	}
	online(1)
	if res, _ := d.conn.Post(ctx, "/rd/nope", message.TextPlain, nil); res.Code() != codes.NotFound {
		t.Errorf("update of an unknown registration: %v", res.Code())
	}
	// The lifetime passes without an update: offline.
	e.clk.Advance(61 * time.Second)
	if got := e.rec.next(t); got != "d1 disconnected:{}" {
		t.Fatalf("after the lifetime: %q", got)
	}
	online(0)
	// Register again, then de-register.
	if res, err := d.register(t, "ep=d1&lt=60&b=UQ", links); err != nil || res.Code() != codes.Created {
		t.Fatalf("register: %v %v", res, err)
	}
	if got := e.rec.next(t); got != "d1 connected:{queue_mode:true}" {
		t.Fatalf("got %q", got)
	}
	// Queue mode: asleep after the awake window.
	e.clk.Advance(31 * time.Second)
	if got := e.rec.next(t); got != "d1 asleep:{}" {
		t.Fatalf("queue mode: %q", got)
	}
	online(1) // asleep is still registered
	// A re-registration (a reboot) replaces the registration: still one
	// device online (dropping the old one, aside, takes nothing off: it is
	// no longer the device's current registration).
	oldLoc := d.loc
	if res, err := d.register(t, "ep=d1&lt=60&b=U", links); err != nil || res.Code() != codes.Created || d.loc == oldLoc {
		t.Fatalf("register again: %v %v (location %q, was %q)", res, err, d.loc, oldLoc)
	}
	if got := e.rec.next(t); got != "d1 connected:{}" {
		t.Fatalf("re-registered: %q", got)
	}
	online(1)
	res, err = d.conn.Delete(ctx, d.loc)
	if err != nil || res.Code() != codes.Deleted {
		t.Fatalf("de-register: %v %v", res, err)
	}
	if got := e.rec.next(t); got != "d1 disconnected:{}" {
		t.Fatalf("after de-registering: %q", got)
	}
	online(0)
}

func TestDeviceManagement(t *testing.T) {
	e := newEnv(t)
	d := dial(t, e)
	tlv, err := lwm2mcodec.EncodeTLV([]lwm2mcodec.Value{
		lwm2mcodec.IntValue(lwm2mcodec.ResourcePath(4, 0, 2), -95),
		lwm2mcodec.IntValue(lwm2mcodec.ResourcePath(4, 0, 11), 12),
		lwm2mcodec.IntValue(lwm2mcodec.ResourcePath(4, 0, 8), 12345),
	})
	if err != nil {
		t.Fatal(err)
	}
	d.set("/3/0/3", resource{message.TextPlain, []byte("1.0")})
	d.set("/4/0", resource{message.AppLwm2mTLV, tlv})
	d.set("/5/0/3", resource{message.TextPlain, []byte("0")})
	fota, err := lwm2mcodec.EncodeTLV([]lwm2mcodec.Value{
		lwm2mcodec.IntValue(lwm2mcodec.ResourcePath(5, 0, 3), 2),
		lwm2mcodec.IntValue(lwm2mcodec.ResourcePath(5, 0, 5), 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	d.set("/5/0", resource{message.AppLwm2mTLV, fota})
	if _, err := d.register(t, "ep=d1&lt=600", links); err != nil {
		t.Fatal(err)
	}
	e.rec.next(t)
	ctx := context.Background()
	send := func(k any) {
		t.Helper()
		dl := &messages.Downlink{DeviceId: "d1"}
		switch v := k.(type) {
		case *messages.Downlink_Lwm2MRead:
			dl.Kind = v
		case *messages.Downlink_Lwm2MObserve:
			dl.Kind = v
		case *messages.Downlink_Lwm2MWrite:
			dl.Kind = v
		case *messages.Downlink_Lwm2MWritePackageUri:
			dl.Kind = v
		case *messages.Downlink_Lwm2MExecute:
			dl.Kind = v
		case *messages.Downlink_PcpQueryVersion:
			dl.Kind = v
		case *messages.Downlink_PcpSegmentResponse:
			dl.Kind = v
		}
		if err := e.srv.Send(ctx, dl); err != nil {
			t.Fatal(err)
		}
	}
	read := func(path string) { send(&messages.Downlink_Lwm2MRead{Lwm2MRead: &messages.Lwm2MRead{Path: path}}) }
	read("/3/0/3")
	if got := e.rec.next(t); got != `d1 version_reported:{fw_version:"1.0"} no_ack:true` {
		t.Fatalf("read /3/0/3: %q", got)
	}
	read("/4/0")
	if got := e.rec.next(t); got != `d1 radio_reported:{rsrp:-95 sinr:12 cell_id:"12345"} no_ack:true` {
		t.Fatalf("read /4/0: %q", got)
	}
	read("/4/0/8")
	if got := e.rec.next(t); got != `d1 lwm2m_response:{op:LWM2M_OP_READ path:"/4/0/8" code:"4.04"} no_ack:true` {
		t.Fatalf("read of a missing resource: %q", got)
	}
	// A read's tag comes back in its answer (issue 22: the device machine
	// tells the answer of a read sent after an Execute from an older one's).
	send(&messages.Downlink_Lwm2MRead{Lwm2MRead: &messages.Lwm2MRead{Path: "/5/0", Tag: 7}})
	if got := e.rec.next(t); got != `d1 fota_status:{state:2 update_result:0} no_ack:true request_tag:7` {
		t.Fatalf("tagged read of object 5: %q", got)
	}
	send(&messages.Downlink_Lwm2MRead{Lwm2MRead: &messages.Lwm2MRead{Path: "/4/0/9", Tag: 8}})
	if got := e.rec.next(t); got != `d1 lwm2m_response:{op:LWM2M_OP_READ path:"/4/0/9" code:"4.04"} no_ack:true request_tag:8` {
		t.Fatalf("tagged read of a missing resource: %q", got)
	}
	send(&messages.Downlink_Lwm2MObserve{Lwm2MObserve: &messages.Lwm2MObserve{Path: "/5/0/3"}})
	if got := e.rec.next(t); got != `d1 fota_status:{state:0} no_ack:true` {
		t.Fatalf("observe /5/0/3: %q", got)
	}
	d.notify(t, "/5/0/3", 2, message.TextPlain, []byte("1"))
	if got := e.rec.next(t); got != `d1 fota_status:{state:1}` {
		t.Fatalf("notification: %q", got)
	}
	send(&messages.Downlink_Lwm2MWritePackageUri{Lwm2MWritePackageUri: &messages.Lwm2MWritePackageUri{Job: &messages.Job{
		TaskId: "t1", Attempt: 1, Package: &messages.Package{PackageId: "fw", Version: "2.0"}}}})
	// The URI and its token go to the engine (the device's timeline) before
	// the write's answer.
	wantOffered(t, e.rec.next(t), "d1", d)
	if got := e.rec.next(t); got != `d1 lwm2m_response:{op:LWM2M_OP_WRITE path:"/5/0/1" success:true code:"2.04"} no_ack:true` {
		t.Fatalf("package URI write: %q", got)
	}
	d.mu.Lock()
	uri := d.writes["/5/0/1"]
	d.mu.Unlock()
	if !strings.HasPrefix(uri, "coap://"+e.srv.Addr()+"/fw/fw/t=") {
		t.Fatalf("package URI %q", uri)
	}
	send(&messages.Downlink_Lwm2MExecute{Lwm2MExecute: &messages.Lwm2MExecute{Path: "/5/0/2"}})
	if got := e.rec.next(t); got != `d1 lwm2m_response:{op:LWM2M_OP_EXECUTE path:"/5/0/2" success:true code:"2.04"} no_ack:true` {
		t.Fatalf("execute: %q", got)
	}
	// The empty write of /5/0/1, the reset before an attempt's URI (issue
	// 20 item 6), is answered apart from a package URI's write.
	send(&messages.Downlink_Lwm2MWrite{Lwm2MWrite: &messages.Lwm2MWrite{Path: "/5/0/1"}})
	if got := e.rec.next(t); got != `d1 lwm2m_response:{op:LWM2M_OP_WRITE path:"/5/0/1" success:true code:"2.04" fota_reset:true} no_ack:true` {
		t.Fatalf("reset of object 5: %q", got)
	}

	// PCP: a frame notified on /19/0/0 becomes its input; downlinks are
	// PUT on /19/1/0; a segment response carries the package's bytes.
	frame, _ := pcp.EncodeVersionResponse(pcp.VersionResponse{Version: "V1.0"})
	d.set("/19/0/0", resource{message.AppOctets, frame})
	send(&messages.Downlink_Lwm2MObserve{Lwm2MObserve: &messages.Lwm2MObserve{Path: "/19/0/0"}})
	if got := e.rec.next(t); got != `d1 pcp_version:{version:"V1.0"} no_ack:true` {
		t.Fatalf("PCP uplink: %q", got)
	}
	req, _ := pcp.EncodeSegmentRequest(pcp.SegmentRequest{Version: "V2.0", SegmentNo: 3})
	d.notify(t, "/19/0/0", 2, message.AppOctets, req)
	if got := e.rec.next(t); got != `d1 pcp_segment_request:{version:"V2.0" segment_no:3}` {
		t.Fatalf("PCP segment request: %q", got)
	}
	d.notify(t, "/19/0/0", 3, message.AppOctets, []byte(`{"temp":21}`))
	if got := e.rec.next(t); got != `d1 uplink:{}` {
		t.Fatalf("business data: %q", got)
	}
	send(&messages.Downlink_PcpSegmentResponse{PcpSegmentResponse: &messages.PcpSegmentResponse{SegmentNo: 3, PackageId: "fw", SegmentSize: 500}})
	send(&messages.Downlink_PcpQueryVersion{PcpQueryVersion: &messages.PcpQueryVersion{}})
	waitDevice(t, d, func() bool { return len(d.pcpDown) == 2 })
	d.mu.Lock()
	seg, q := d.pcpDown[0], d.pcpDown[1]
	d.mu.Unlock()
	m, err := pcp.DecodeDownlink(seg)
	if sr, ok := m.(pcp.SegmentResponse); err != nil || !ok || sr.SegmentNo != 3 || !bytes.Equal(sr.Data, e.content[1500:2000]) {
		t.Fatalf("segment response %v %v", m, err)
	}
	if !bytes.Equal(q, pcp.EncodeQueryVersion()) {
		t.Fatalf("query %x", q)
	}
}

// waitDevice polls the device's state (it is written by go-coap's
// goroutines) until cond holds.
func waitDevice(t *testing.T, d *device, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		d.mu.Lock()
		ok := cond()
		d.mu.Unlock()
		if ok {
			return
		}
		if ctx.Err() != nil {
			t.Fatal("timed out")
		}
		// A ping is a round trip to the server: a wait without a timer.
		_ = d.conn.Ping(ctx)
	}
}

// TestPackageBlocks: the package is served a Block2 block at a time, any
// block first, in the client's block size, with a token.
func TestPackageBlocks(t *testing.T) {
	e := newEnv(t)
	d := dial(t, e)
	tok, _ := e.dl.Mint(download.Grant{TaskID: "t1", DeviceID: "d1", Attempt: 1, PackageID: "fw"})
	get := func(num, szx uint32, token string) (*pool.Message, []byte) {
		t.Helper()
		return getBlock(t, d, "/fw/fw", num, szx, token)
	}
	var all []byte
	for num := uint32(0); ; num++ {
		res, b := get(num, 6, tok)
		if res.Code() != codes.Content {
			t.Fatalf("block %d: %v", num, res.Code())
		}
		all = append(all, b...)
		v, err := res.Options().GetUint32(message.Block2)
		if err != nil || v>>4 != num || v&7 != 6 {
			t.Fatalf("block %d: Block2 %x %v", num, v, err)
		}
		if etag, err := res.Options().GetBytes(message.ETag); err != nil || !bytes.Equal(etag, e.sum[:8]) {
			t.Fatalf("ETag %x %v", etag, err)
		}
		if v&8 == 0 {
			break
		}
	}
	if sha256.Sum256(all) != e.sum {
		t.Fatalf("downloaded %d bytes with another SHA-256", len(all))
	}
	// Block 7 of 64 bytes alone: exactly those bytes.
	if res, b := get(7, 2, tok); res.Code() != codes.Content || !bytes.Equal(b, e.content[7*64:8*64]) {
		t.Fatalf("block 7 of 64 bytes: %v, %d bytes", res.Code(), len(b))
	}
	if res, _ := get(1000, 6, tok); res.Code() != codes.BadOption {
		t.Errorf("a block past the end: %v", res.Code())
	}
	if res, _ := get(0, 6, "forged"); res.Code() != codes.Unauthorized {
		t.Errorf("a forged token: %v", res.Code())
	}
	other, _ := e.dl.Mint(download.Grant{TaskID: "t1", DeviceID: "d1", Attempt: 1, PackageID: "other"})
	if res, _ := get(0, 6, other); res.Code() != codes.Forbidden {
		t.Errorf("another package's token: %v", res.Code())
	}
	// Progress: reported in tenths, the whole package in all.
	var total int64
	for total < int64(len(e.content)) {
		select {
		case s := <-e.served:
			total += s[1]
		default:
			t.Fatalf("served %d of %d bytes", total, len(e.content))
		}
	}
}

// getBlock asks for block num of size 2^(szx+4) of the package at path
// with a download token.
func getBlock(t *testing.T, d *device, path string, num, szx uint32, token string) (*pool.Message, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := d.conn.NewGetRequest(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	req.AddOptionString(message.URIQuery, "t="+token)
	buf := make([]byte, 4)
	n, _ := message.EncodeUint32(buf, num<<4|szx)
	req.AddOptionBytes(message.Block2, buf[:n])
	res, err := d.conn.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Body() == nil { // an answer without a payload
		return res, nil
	}
	b, _ := io.ReadAll(res.Body())
	return res, b
}

// TestPackageMismatchBlocks (issue 19): a package whose stored file differs
// from its record in size or in SHA-256 is refused over CoAP Block2 (5.00),
// as over HTTP, and nothing is reported served; the package beside them,
// whose file matches, is served.
func TestPackageMismatchBlocks(t *testing.T) {
	e := newEnv(t)
	d := dial(t, e)
	ctx := context.Background()
	for id, tamper := range map[string]func(*persistence.Package){
		"fw-size":   func(p *persistence.Package) { p.Size++ },
		"fw-sha256": func(p *persistence.Package) { p.SHA256[0] ^= 1 },
	} {
		size, sum, err := e.store.WriteBlob(ctx, id, bytes.NewReader(e.content), 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		p := persistence.Package{ID: id, ProductID: "p", Type: persistence.PackageFirmware, Version: "2.0", FileName: id + ".bin", Size: size, SHA256: sum}
		tamper(&p)
		if err := e.store.PutPackage(ctx, p); err != nil {
			t.Fatal(err)
		}
		tok, _ := e.dl.Mint(download.Grant{TaskID: "t1", DeviceID: "d1", Attempt: 1, PackageID: id})
		for _, num := range []uint32{0, 9} {
			if res, b := getBlock(t, d, "/fw/"+id, num, 0, tok); res.Code() != codes.InternalServerError {
				t.Errorf("%s block %d: %v with %d bytes, want %v", id, num, res.Code(), len(b), codes.InternalServerError)
			}
		}
	}
	tok, _ := e.dl.Mint(download.Grant{TaskID: "t1", DeviceID: "d1", Attempt: 1, PackageID: "fw"})
	if res, b := getBlock(t, d, "/fw/fw", 0, 0, tok); res.Code() != codes.Content || !bytes.Equal(b, e.content[:16]) {
		t.Fatalf("fw block 0: %v, %d bytes", res.Code(), len(b))
	}
	select {
	case s := <-e.served:
		t.Errorf("served %v: the refused packages were reported served", s)
	default:
	}
}

// coapClient is the path of libcoap's coap-client; the test fails without
// one (skips with OTAFLEET_SKIP_COAP_CLIENT=1).
func coapClient(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"coap-client-notls", "coap-client", "coap-client-openssl", "coap-client-gnutls"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("OTAFLEET_SKIP_COAP_CLIENT") == "1" {
		t.Skip("no coap-client and OTAFLEET_SKIP_COAP_CLIENT=1")
	}
	t.Fatal("coap-client is not installed: apt-get install libcoap3-bin (.ci/run does), or set OTAFLEET_SKIP_COAP_CLIENT=1")
	return ""
}

// dialPSK opens a DTLS session to the server as identity with key.
func dialPSK(e *env, identity string, key []byte, opts ...udp.Option) (*client.Conn, error) {
	return dialPSKSuite(e, identity, key, piondtls.TLS_PSK_WITH_AES_128_CCM_8, opts...)
}

// dialPSKSuite is dialPSK offering only the cipher suite suite.
func dialPSKSuite(e *env, identity string, key []byte, suite piondtls.CipherSuiteID, opts ...udp.Option) (*client.Conn, error) {
	cfg := &piondtls.Config{
		PSK:             func([]byte) ([]byte, error) { return key, nil },
		PSKIdentityHint: []byte(identity),
		CipherSuites:    []piondtls.CipherSuiteID{suite},
	}
	// The handshake runs here, bounded: coapdtls.Dial leaves it to the
	// first request, without a deadline, and a wrong PSK's handshake
	// (which the server drops) then hung the test for ten minutes.
	raddr, err := net.ResolveUDPAddr("udp", e.srv.DTLSAddr())
	if err != nil {
		return nil, err
	}
	pc, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return nil, err
	}
	dc, err := piondtls.Client(dtlsnet.PacketConnFromConn(pc), raddr, cfg)
	if err != nil {
		pc.Close()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := dc.HandshakeContext(ctx); err != nil {
		dc.Close()
		return nil, err
	}
	opts = append([]udp.Option{options.WithBlockwise(false, blockwise.SZX1024, time.Minute), options.WithCloseSocket()}, opts...)
	return coapdtls.Client(dc, opts...), nil
}

// TestDTLS: a device with a PSK registers over DTLS as itself; a wrong PSK
// never gets a session, and plain CoAP is refused to it.
func TestDTLS(t *testing.T) {
	e := newEnv(t)
	dialPSK := func(identity string, key []byte) (*client.Conn, error) { return dialPSK(e, identity, key) }
	register := func(conn interface {
		NewPostRequest(context.Context, string, message.MediaType, io.ReadSeeker, ...message.Option) (*pool.Message, error)
		Do(*pool.Message) (*pool.Message, error)
	}, ep string) codes.Code {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, err := conn.NewPostRequest(ctx, "/rd", message.AppLinkFormat, strings.NewReader(links))
		if err != nil {
			t.Fatal(err)
		}
		req.AddOptionString(message.URIQuery, "ep="+ep)
		res, err := conn.Do(req)
		if err != nil {
			t.Fatalf("register %s: %v", ep, err)
		}
		return res.Code()
	}
	conn, err := dialPSK("d3", []byte("psk-of-d3"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if c := register(conn, "d1"); c != codes.Forbidden {
		t.Errorf("another endpoint over d3's session: %v", c)
	}
	if c := register(conn, "d3"); c != codes.Created {
		t.Fatalf("d3 over DTLS: %v", c)
	}
	if got := e.rec.next(t); got != "d3 connected:{}" {
		t.Fatalf("got %q", got)
	}
	// Plain CoAP: d3 has a PSK and is refused.
	d := dial(t, e)
	if res, err := d.register(t, "ep=d3", links); err != nil || res.Code() != codes.Forbidden {
		t.Errorf("d3 over plain CoAP: %v %v", res, err)
	}
	// A wrong PSK: no session, so no registration.
	bad, err := dialPSK("d3", []byte("wrong"))
	if err == nil {
		defer bad.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		req, _ := bad.NewPostRequest(ctx, "/rd", message.AppLinkFormat, strings.NewReader(links))
		req.AddOptionString(message.URIQuery, "ep=d3")
		if res, err := bad.Do(req); err == nil {
			t.Fatalf("a wrong PSK registered: %v", res.Code())
		}
	}
	e.rec.mu.Lock()
	defer e.rec.mu.Unlock()
	if n := strings.Count(strings.Join(e.rec.got, "\n"), "connected"); n != 1 {
		t.Fatalf("%d registrations delivered: %v", n, e.rec.got)
	}
}

// TestStrayResponses: a response that matches no request (a late
// notification) is dropped, not answered: answering responses with
// responses made server and device play ping-pong forever.
func TestStrayResponses(t *testing.T) {
	e := newEnv(t)
	d := dial(t, e)
	for i := range 5 {
		m := d.conn.AcquireMessage(context.Background())
		m.SetCode(codes.Content)
		m.SetToken(message.Token{0xde, 0xad, byte(i)})
		m.SetType(message.NonConfirmable)
		m.SetBody(bytes.NewReader([]byte("late")))
		if err := d.conn.WriteMessage(m); err != nil {
			t.Fatal(err)
		}
		d.conn.ReleaseMessage(m)
	}
	// Round trips after the stray messages: anything the server sent back
	// would have arrived first.
	for range 3 {
		if err := d.conn.Ping(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stray != 0 {
		t.Fatalf("the server answered %d stray responses", d.stray)
	}
	if n := e.srv.Exchanges(); n != 0 {
		t.Fatalf("stray responses counted as %d exchanges", n)
	}
}

// TestSilentDeviceStaysReachable: a registered device that says nothing for
// a long time is still reached by the server's requests. go-coap closed a
// silent conversation after 16 s by default: devices waiting longer than
// that for a cell slot used to fail their upgrade with "connection was
// closed" (seen at 6,000 devices). Plain CoAP now keeps no conversation per
// peer; half an hour of silence (past every exchange lifetime) changes
// nothing.
func TestSilentDeviceStaysReachable(t *testing.T) {
	e := newEnv(t)
	d := dial(t, e)
	d.set("/3/0/3", resource{message.TextPlain, []byte("1.0")})
	if _, err := d.register(t, "ep=d1&lt=7200", links); err != nil {
		t.Fatal(err)
	}
	e.rec.next(t)
	e.clk.Advance(30 * time.Minute)
	dl := &messages.Downlink{DeviceId: "d1", Kind: &messages.Downlink_Lwm2MRead{Lwm2MRead: &messages.Lwm2MRead{Path: "/3/0/3"}}}
	if err := e.srv.Send(context.Background(), dl); err != nil {
		t.Fatal(err)
	}
	if got := e.rec.next(t); got != `d1 version_reported:{fw_version:"1.0"} no_ack:true` {
		t.Fatalf("read after the silence: %q", got)
	}
}

// TestSilentDTLSDeviceStaysReachable: over DTLS (a go-coap session per
// device), a stray session is closed once silent for PeerIdle; a
// registered device's is not, however long it is silent.
func TestSilentDTLSDeviceStaysReachable(t *testing.T) {
	e := newEnv(t, func(c *lwm2m.Config) { c.PeerIdle = 50 * time.Millisecond })
	d := &device{values: map[string]resource{}, writes: map[string]string{}, obsToken: map[string]message.Token{}}
	router := mux.NewRouter()
	router.DefaultHandleFunc(d.handle)
	conn, err := dialPSK(e, "d3", []byte("psk-of-d3"), options.WithMux(router))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d.conn = conn
	d.set("/3/0/3", resource{message.TextPlain, []byte("1.0")})
	if res, err := d.register(t, "ep=d3&lt=600", links); err != nil || res.Code() != codes.Created {
		t.Fatalf("register over DTLS: %v %v", res, err)
	}
	e.rec.next(t)
	// A stray session: it handshakes and pings without registering.
	stray, err := dialPSK(e, "d3", []byte("psk-of-d3"))
	if err != nil {
		t.Fatal(err)
	}
	defer stray.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := stray.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	strayAddr := stray.LocalAddr().String()
	// Once the stray session is closed for silence, the device has been
	// silent for longer than PeerIdle too.
	for closed := ""; closed != strayAddr; {
		select {
		case closed = <-e.strayClosed:
			if closed == d.conn.LocalAddr().String() {
				t.Fatal("the registered device's session was closed")
			}
		case <-ctx.Done():
			t.Fatal("the stray session was never closed")
		}
	}
	dl := &messages.Downlink{DeviceId: "d3", Kind: &messages.Downlink_Lwm2MRead{Lwm2MRead: &messages.Lwm2MRead{Path: "/3/0/3"}}}
	if err := e.srv.Send(ctx, dl); err != nil {
		t.Fatal(err)
	}
	if got := e.rec.next(t); got != `d3 version_reported:{fw_version:"1.0"} no_ack:true` {
		t.Fatalf("read after the silence: %q", got)
	}
}

func TestFresherNotification(t *testing.T) {
	cases := []struct {
		v1, v2  uint32
		elapsed time.Duration
		want    bool
	}{
		{1, 2, 0, true},
		{2, 1, 0, false},
		{2, 2, 0, false},
		{1<<24 - 1, 0, 0, true},         // the 24-bit counter wrapped
		{0, 1<<24 - 1, 0, false},        // an old one from before the wrap
		{5, 3, 129 * time.Second, true}, // too long ago to compare
	}
	for _, c := range cases {
		if got := lwm2m.Fresher(c.v1, c.v2, c.elapsed); got != c.want {
			t.Errorf("fresher(%d, %d, %v) = %v, want %v", c.v1, c.v2, c.elapsed, got, c.want)
		}
	}
}
