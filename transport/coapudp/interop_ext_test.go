package coapudp_test

import (
	"bytes"
	"context"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"

	"github.com/otafleet/otafleet/transport/coapudp"
)

var pkg = func() []byte {
	b := make([]byte, 10_000)
	for i := range b {
		b[i] = byte(i*31 + i>>8)
	}
	return b
}()

// handler registers on POST /rd and serves pkg block-wise on GET /fw.
func handler(w *coapudp.ResponseWriter, r *coapudp.Request) {
	p, _ := r.Msg.Options.Path()
	switch {
	case p == "/rd" && r.Msg.Code == codes.POST:
		w.SetResponse(codes.Created, message.TextPlain, nil, message.Option{ID: message.LocationPath, Value: []byte("rd")}, message.Option{ID: message.LocationPath, Value: []byte("r1")})
	case p == "/fw" && r.Msg.Code == codes.GET:
		coapudp.ServeBlock2(w, r, message.AppOctets, bytes.NewReader(pkg), int64(len(pkg)), []byte{1, 2, 3, 4}, 5)
	default:
		w.SetResponse(codes.NotFound, message.TextPlain, nil)
	}
}

func start(t *testing.T) *coapudp.Server {
	t.Helper()
	s, err := coapudp.Listen("127.0.0.1:0", coapudp.Config{Handler: handler})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() { s.Close() })
	return s
}

// TestGoCoapDevice: go-coap's UDP client as the device registers, downloads
// block-wise, and answers the server's read and observation.
func TestGoCoapDevice(t *testing.T) {
	s := start(t)
	router := mux.NewRouter()
	var obsToken message.Token
	notes := make(chan struct{})
	if err := router.Handle("/3/0/3", mux.HandlerFunc(func(w mux.ResponseWriter, r *mux.Message) {
		if obs, err := r.Observe(); err == nil && obs == 0 {
			obsToken = append(message.Token(nil), r.Token()...)
			close(notes)
			if err := w.SetResponse(codes.Content, message.TextPlain, strings.NewReader("1.0"), message.Option{ID: message.Observe, Value: []byte{1}}); err != nil {
				t.Error(err)
			}
			return
		}
		if err := w.SetResponse(codes.Content, message.TextPlain, strings.NewReader("1.0")); err != nil {
			t.Error(err)
		}
	})); err != nil {
		t.Fatal(err)
	}
	cc, err := udp.Dial(s.Addr().String(), options.WithMux(router))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx := context.Background()
	res, err := cc.Post(ctx, "/rd", message.TextPlain, strings.NewReader("</3/0>"))
	if err != nil {
		t.Fatal(err)
	}
	if loc, _ := res.Options().LocationPath(); res.Code() != codes.Created || loc != "/rd/r1" {
		t.Fatalf("register: %v %q", res.Code(), loc)
	}
	res, err = cc.Get(ctx, "/fw") // go-coap's block-wise client follows Block2
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body())
	if err != nil || !bytes.Equal(body, pkg) {
		t.Fatalf("download: %d bytes, %v", len(body), err)
	}
	peer := netip.MustParseAddrPort(cc.LocalAddr().String())
	// The server reads a resource of the device.
	opts, _, _ := message.Options{}.SetPath(make([]byte, 32), "/3/0/3")
	r, err := s.Do(ctx, peer, &message.Message{Code: codes.GET, Options: opts})
	if err != nil || r.Code != codes.Content || string(r.Payload) != "1.0" {
		t.Fatalf("read: %v %v", r, err)
	}
	// And observes it: a CON notification from the device reaches the
	// callback and is acknowledged (WriteMessage waits for the ACK).
	got := make(chan string, 1)
	o, first, err := s.Observe(ctx, peer, &message.Message{Code: codes.GET, Options: opts}, func(n *message.Message, ack func(bool)) { got <- string(n.Payload); ack(true) })
	if err != nil || o == nil || string(first.Payload) != "1.0" {
		t.Fatalf("observe: %v %v %v", o, first, err)
	}
	<-notes
	n := cc.AcquireMessage(ctx)
	defer cc.ReleaseMessage(n)
	n.SetCode(codes.Content)
	n.SetToken(obsToken)
	n.SetType(message.Confirmable)
	n.SetObserve(2)
	n.SetContentFormat(message.TextPlain)
	n.SetBody(strings.NewReader("2.0"))
	if err := cc.WriteMessage(n); err != nil {
		t.Fatal(err)
	}
	if p := <-got; p != "2.0" {
		t.Fatalf("notification %q", p)
	}
}

// TestCoapClientBlock2 downloads with libcoap's coap-client.
func TestCoapClientBlock2(t *testing.T) {
	bin, err := exec.LookPath("coap-client-notls")
	if err != nil {
		t.Skip("coap-client-notls (Debian libcoap3-bin) not installed")
	}
	s := start(t)
	for _, size := range []string{"64", "1024"} {
		out := filepath.Join(t.TempDir(), "pkg")
		cmd := exec.Command(bin, "-m", "get", "-b", size, "-o", out, "coap://"+s.Addr().String()+"/fw")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("coap-client -b %s: %v\n%s", size, err, b)
		}
		got, err := os.ReadFile(out)
		if err != nil || !bytes.Equal(got, pkg) {
			t.Fatalf("coap-client -b %s: %d bytes, %v", size, len(got), err)
		}
	}
}
