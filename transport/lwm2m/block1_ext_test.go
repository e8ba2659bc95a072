package lwm2m_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
)

// dialBlockwise is dial with go-coap's block-wise transfers on: a request
// body larger than a block of szx goes as Block1 blocks.
func dialBlockwise(t *testing.T, e *env, szx blockwise.SZX) *device {
	t.Helper()
	d := &device{values: map[string]resource{}, writes: map[string]string{}, obsToken: map[string]message.Token{}}
	router := mux.NewRouter()
	router.DefaultHandleFunc(d.handle)
	conn, err := udp.Dial(e.srv.Addr(), options.WithMux(router), options.WithBlockwise(true, szx, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d.conn = conn
	return d
}

// manyLinks is a registration body of n object instances.
func manyLinks(n int) string {
	var b strings.Builder
	b.WriteString(`</>;rt="oma.lwm2m";ct=11543`)
	for i := range n {
		fmt.Fprintf(&b, ",</%d/0>", 3+i)
	}
	return b.String()
}

// TestBlock1Registration: a registration, and an update, whose link-format
// body needs several blocks (Block1) are taken over a real UDP socket; one
// beyond the bound is refused with 4.13.
func TestBlock1Registration(t *testing.T) {
	e := newEnv(t)
	d := dialBlockwise(t, e, blockwise.SZX64)
	body := manyLinks(100) // ~900 bytes: 15 blocks of 64
	if len(body) < 10*64 {
		t.Fatalf("a body of %d bytes", len(body))
	}
	res, err := d.register(t, "ep=d1&lt=60&lwm2m=1.1&b=U", body)
	if err != nil || res.Code() != codes.Created || !strings.HasPrefix(d.loc, "/rd/") {
		t.Fatalf("block-wise registration: %v %v, location %q", res, err, d.loc)
	}
	if got := e.rec.next(t); got != "d1 connected:{}" {
		t.Fatalf("got %q", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err = d.conn.Post(ctx, d.loc, message.AppLinkFormat, strings.NewReader(manyLinks(120)))
	if err != nil || res.Code() != codes.Changed {
		t.Fatalf("block-wise update: %v %v", res, err)
	}
	if got := e.rec.next(t); got != "d1 uplink:{registration_update:true}" {
		t.Fatalf("after the update: %q", got)
	}
	// A body whose links do not parse, sent in blocks, is refused as a
	// single-datagram one is.
	if res, err := d.conn.Post(ctx, d.loc, message.AppLinkFormat, strings.NewReader(manyLinks(100)+",</5/0")); err != nil || res.Code() != codes.BadRequest {
		t.Fatalf("a block-wise update with bad links: %v %v", res, err)
	}
	// Beyond 16 KiB: 4.13.
	big := dialBlockwise(t, e, blockwise.SZX1024)
	res, err = big.register(t, "ep=d2", manyLinks(3000))
	if err != nil || res.Code() != codes.RequestEntityTooLarge {
		t.Fatalf("a registration of %d bytes: %v %v", len(manyLinks(3000)), res, err)
	}
	if size1, err := res.Options().GetUint32(message.Size1); err != nil || size1 != 16<<10 {
		t.Errorf("4.13 with Size1 %d %v, want the bound, 16384", size1, err)
	}
	if got := e.delivered(); got != "d1 connected:{}\nd1 uplink:{registration_update:true}" {
		t.Fatalf("delivered:\n%s", got)
	}
}

// TestBlock1CoapClient: libcoap's coap-client registers with a body in
// blocks of 64 bytes (a second, independent Block1 client).
func TestBlock1CoapClient(t *testing.T) {
	bin := coapClient(t)
	e := newEnv(t)
	file := filepath.Join(t.TempDir(), "links")
	if err := os.WriteFile(file, []byte(manyLinks(100)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-m", "post", "-b", "64", "-t", "40", "-f", file, "coap://"+e.srv.Addr()+"/rd?ep=d1&lt=60")
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("coap-client: %v: %s", err, out)
	}
	if got := e.rec.next(t); got != "d1 connected:{}" {
		t.Fatalf("got %q", got)
	}
}
