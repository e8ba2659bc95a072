package lwm2msim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/mux"
	coapnet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"

	"github.com/otafleet/otafleet/transport/lwm2m/lwm2mcodec"
)

// waitFor bounds every wait of the tests on the device or the server (a
// hang is a failure, not a sleep).
const waitFor = 10 * time.Second

// testServer is a minimal LwM2M server: registration interface, a
// block-wise package store on /fw/{id}, and helpers that send requests to a
// registered device over its registration's connection.
type testServer struct {
	addr string

	mu      sync.Mutex
	stop    func()          // nil while down
	allowed map[string]bool // nil: every endpoint
	nextID  int
	regs    map[string]*registration // by location id
	pkgs    map[string]testPackage
	blocks  []blockReq
	events  chan srvEvent
}

// registration is one device registration as the server saw it.
type registration struct {
	id, ep       string
	conn         mux.Conn
	query        map[string]string
	links        string
	objects      []string
	remote       string
	updates      int
	deregistered bool
}

type srvEvent struct {
	kind string // "register", "update", "deregister"
	reg  *registration
}

type testPackage struct {
	data []byte
	etag []byte
}

// blockReq is one block request the server served.
type blockReq struct {
	pkg  string
	num  int64
	size int64
}

func newTestServer(t *testing.T) *testServer {
	t.Helper()
	ts := &testServer{
		addr:   "127.0.0.1:0",
		regs:   map[string]*registration{},
		pkgs:   map[string]testPackage{},
		events: make(chan srvEvent, 64),
	}
	ts.up(t)
	t.Cleanup(ts.down)
	return ts
}

// up starts serving on ts.addr (the first time: a free port, kept for the
// restarts).
func (ts *testServer) up(t *testing.T) {
	t.Helper()
	l, err := coapnet.NewListenUDP("udp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = l.LocalAddr().String()
	router := mux.NewRouter()
	router.SetErrorHandler(func(error) {})
	router.DefaultHandle(mux.HandlerFunc(ts.serve))
	srv := udp.NewServer(options.WithMux(router), options.WithErrors(func(error) {}))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	ts.mu.Lock()
	ts.stop = func() {
		srv.Stop()
		<-done
		_ = l.Close()
	}
	ts.mu.Unlock()
}

// down closes the server's socket, as a server process that was killed: a
// message to it is answered by ICMP port-unreachable. The registrations
// are kept, as a server that restores them.
func (ts *testServer) down() {
	ts.mu.Lock()
	stop := ts.stop
	ts.stop = nil
	ts.mu.Unlock()
	if stop != nil {
		stop()
	}
}

func (ts *testServer) allow(eps ...string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.allowed = map[string]bool{}
	for _, ep := range eps {
		ts.allowed[ep] = true
	}
}

// addPackage stores a package served block-wise on /fw/{id}, with an ETag.
func (ts *testServer) addPackage(id string, data []byte) string {
	sum := sha256.Sum256(data)
	ts.mu.Lock()
	ts.pkgs[id] = testPackage{data: data, etag: sum[:4]}
	ts.mu.Unlock()
	return "coap://" + ts.addr + "/fw/" + id
}

// forget drops a registration, as a server that restarted would.
func (ts *testServer) forget(id string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	delete(ts.regs, id)
}

func (ts *testServer) blockLog() []blockReq {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]blockReq(nil), ts.blocks...)
}

func (ts *testServer) serve(w mux.ResponseWriter, r *mux.Message) {
	p, _ := r.Options().Path()
	parts := strings.Split(strings.Trim(p, "/"), "/")
	switch {
	case r.Code() == codes.POST && p == "/rd":
		ts.register(w, r)
	case len(parts) == 2 && parts[0] == "rd":
		ts.mu.Lock()
		reg := ts.regs[parts[1]]
		ts.mu.Unlock()
		if reg == nil {
			_ = w.SetResponse(codes.NotFound, message.TextPlain, nil)
			return
		}
		switch r.Code() {
		case codes.POST:
			ts.mu.Lock()
			reg.updates++
			ts.mu.Unlock()
			_ = w.SetResponse(codes.Changed, message.TextPlain, nil)
			ts.events <- srvEvent{"update", reg}
		case codes.DELETE:
			ts.mu.Lock()
			delete(ts.regs, reg.id)
			reg.deregistered = true
			ts.mu.Unlock()
			_ = w.SetResponse(codes.Deleted, message.TextPlain, nil)
			ts.events <- srvEvent{"deregister", reg}
		default:
			_ = w.SetResponse(codes.MethodNotAllowed, message.TextPlain, nil)
		}
	case r.Code() == codes.GET && len(parts) == 2 && parts[0] == "fw":
		ts.mu.Lock()
		pkg, ok := ts.pkgs[parts[1]]
		if ok {
			br := blockReq{pkg: parts[1], num: -1}
			if v, err := r.Options().GetUint32(message.Block2); err == nil {
				if szx, num, _, err := blockwise.DecodeBlockOption(v); err == nil {
					br.num, br.size = num, szx.Size()
				}
			}
			ts.blocks = append(ts.blocks, br)
		}
		ts.mu.Unlock()
		if !ok {
			_ = w.SetResponse(codes.NotFound, message.TextPlain, nil)
			return
		}
		// go-coap's block-wise layer serves the block the request asks for
		// from this seekable body, in the client's block size (capped at the
		// server's, 1024).
		_ = w.SetResponse(codes.Content, message.AppOctets, bytes.NewReader(pkg.data),
			message.Option{ID: message.ETag, Value: pkg.etag})
	default:
		_ = w.SetResponse(codes.NotFound, message.TextPlain, nil)
	}
}

func (ts *testServer) register(w mux.ResponseWriter, r *mux.Message) {
	qs, _ := r.Queries()
	q := map[string]string{}
	for _, s := range qs {
		k, v, _ := strings.Cut(s, "=")
		q[k] = v
	}
	body, _ := r.ReadBody()
	links, err := lwm2mcodec.ParseLinkFormat(string(body))
	if err != nil {
		_ = w.SetResponse(codes.BadRequest, message.TextPlain, nil)
		return
	}
	objs, _, err := lwm2mcodec.Objects(links)
	if err != nil {
		_ = w.SetResponse(codes.BadRequest, message.TextPlain, nil)
		return
	}
	ts.mu.Lock()
	if q["ep"] == "" || (ts.allowed != nil && !ts.allowed[q["ep"]]) {
		ts.mu.Unlock()
		_ = w.SetResponse(codes.Forbidden, message.TextPlain, nil)
		return
	}
	ts.nextID++
	reg := &registration{
		id: strconv.Itoa(ts.nextID), ep: q["ep"], conn: w.Conn(), query: q,
		links: string(body), remote: w.Conn().RemoteAddr().String(),
	}
	for _, o := range objs {
		reg.objects = append(reg.objects, o.Path.String())
	}
	ts.regs[reg.id] = reg
	ts.mu.Unlock()
	_ = w.SetResponse(codes.Created, message.TextPlain, nil,
		message.Option{ID: message.LocationPath, Value: []byte("rd")},
		message.Option{ID: message.LocationPath, Value: []byte(reg.id)})
	ts.events <- srvEvent{"register", reg}
}

// waitEvent waits for the next registration event and checks its kind.
func (ts *testServer) waitEvent(t *testing.T, kind string) *registration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	select {
	case ev := <-ts.events:
		if ev.kind != kind {
			t.Fatalf("server event %q (endpoint %s), want %q", ev.kind, ev.reg.ep, kind)
		}
		return ev.reg
	case <-ctx.Done():
		t.Fatalf("no %q event within %v", kind, waitFor)
		return nil
	}
}

// noEvent checks that no registration event is pending.
func (ts *testServer) noEvent(t *testing.T) {
	t.Helper()
	select {
	case ev := <-ts.events:
		t.Fatalf("unexpected server event %q", ev.kind)
	default:
	}
}

// response is a device's answer.
type response struct {
	code codes.Code
	cf   int // -1: none
	body []byte
}

func readResponse(t *testing.T, m *pool.Message) response {
	t.Helper()
	r := response{code: m.Code(), cf: -1}
	if cf, err := m.ContentFormat(); err == nil {
		r.cf = int(cf)
	}
	if m.Body() != nil {
		b, err := m.ReadBody()
		if err != nil {
			t.Fatal(err)
		}
		r.body = b
	}
	return r
}

// do sends req to the device and returns its answer.
func (ts *testServer) do(t *testing.T, reg *registration, req *pool.Message) response {
	t.Helper()
	defer reg.conn.ReleaseMessage(req)
	resp, err := reg.conn.Do(req)
	if err != nil {
		t.Fatalf("%v %s: %v", req.Code(), pathOf(req), err)
	}
	defer reg.conn.ReleaseMessage(resp)
	return readResponse(t, resp)
}

func pathOf(m *pool.Message) string {
	p, _ := m.Options().Path()
	return p
}

// get reads path; accept < 0 sends no Accept option.
func (ts *testServer) get(t *testing.T, reg *registration, path string, accept int) response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	req, err := reg.conn.NewGetRequest(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if accept >= 0 {
		req.SetAccept(message.MediaType(accept))
	}
	return ts.do(t, reg, req)
}

func (ts *testServer) put(t *testing.T, reg *registration, path string, cf message.MediaType, body []byte) response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	req, err := reg.conn.NewPutRequest(ctx, path, cf, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return ts.do(t, reg, req)
}

func (ts *testServer) post(t *testing.T, reg *registration, path string) response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	req, err := reg.conn.NewPostRequest(ctx, path, message.TextPlain, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ts.do(t, reg, req)
}

func (ts *testServer) delete(t *testing.T, reg *registration, path string) response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	req, err := reg.conn.NewDeleteRequest(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	return ts.do(t, reg, req)
}

// notification is one message of an observation (the first answer
// included).
type notification struct {
	seq  uint32
	cf   int
	body []byte
}

// observation collects the messages of an Observe.
type observation struct {
	obs mux.Observation
	ch  chan notification
}

// observe observes path on the device; go-coap hands every message with
// the observation's token (the first answer too) to the callback, dropping
// those whose Observe sequence is older than the last one seen.
func (ts *testServer) observe(t *testing.T, reg *registration, path string) *observation {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	o := &observation{ch: make(chan notification, 256)}
	obs, err := reg.conn.Observe(ctx, path, func(m *pool.Message) {
		n := notification{cf: -1}
		n.seq, _ = m.Observe()
		if cf, err := m.ContentFormat(); err == nil {
			n.cf = int(cf)
		}
		if m.Body() != nil {
			n.body, _ = m.ReadBody() // read now: go-coap reuses m
		}
		select {
		case o.ch <- n:
		default:
		}
	})
	if err != nil {
		t.Fatalf("observe %s: %v", path, err)
	}
	o.obs = obs
	return o
}

func (o *observation) next(t *testing.T) notification {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	select {
	case n := <-o.ch:
		return n
	case <-ctx.Done():
		t.Fatalf("no notification within %v", waitFor)
		return notification{}
	}
}

// untilInt reads integer notifications (text/plain) until want arrives and
// returns all values seen, want included.
func (o *observation) untilInt(t *testing.T, want int) []int {
	t.Helper()
	var seen []int
	for {
		n := o.next(t)
		v, err := strconv.Atoi(string(n.body))
		if err != nil {
			t.Fatalf("notification %q (cf %d) is not an integer", n.body, n.cf)
		}
		seen = append(seen, v)
		if v == want {
			return seen
		}
	}
}

// uplink returns the next non-empty payload of an observation of /19/0/0
// (the first answer is empty).
func (o *observation) uplink(t *testing.T) []byte {
	t.Helper()
	for {
		n := o.next(t)
		if len(n.body) > 0 {
			if n.cf != int(message.AppOctets) {
				t.Fatalf("uplink content format %d, want 42", n.cf)
			}
			return n.body
		}
	}
}

// requestIgnored sends a GET that the device is expected to drop: it waits
// for the device's "ignored" event, then gives up on the request.
func (ts *testServer) requestIgnored(t *testing.T, reg *registration, path string, events chan string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		resp, err := reg.conn.Get(ctx, path)
		if err == nil {
			err = errors.New("answered " + resp.Code().String())
			reg.conn.ReleaseMessage(resp)
		}
		errc <- err
	}()
	waitHook(t, events, "ignored")
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("GET %s while asleep: %v, want no answer", path, err)
	}
}
