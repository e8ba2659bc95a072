package coapudp

import (
	"bytes"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	coapnet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
)

// The benchmarks run the same traffic, from raw client sockets, against
// this package's server and against go-coap's UDP server (the yardstick of
// issue 21): a POST /rd answered 2.01, and a GET answered with a 1 KiB
// Block2 block.

var block = bytes.Repeat([]byte{0xa5}, 1024)

func benchHandler(w *ResponseWriter, r *Request) {
	if r.Msg.Code == codes.POST {
		w.SetResponse(codes.Created, message.TextPlain, nil, message.Option{ID: message.LocationPath, Value: []byte("rd")})
		return
	}
	w.SetResponse(codes.Content, message.AppOctets, block, UintOption(message.Block2, 1<<4|1<<3|6))
}

func goCoapServer(b *testing.B) netip.AddrPort {
	b.Helper()
	router := mux.NewRouter()
	router.DefaultHandleFunc(func(w mux.ResponseWriter, r *mux.Message) {
		if r.Code() == codes.POST {
			_ = w.SetResponse(codes.Created, message.TextPlain, nil, message.Option{ID: message.LocationPath, Value: []byte("rd")})
			return
		}
		_ = w.SetResponse(codes.Content, message.AppOctets, bytes.NewReader(block), UintOption(message.Block2, 1<<4|1<<3|6))
	})
	lis, err := coapnet.NewListenUDP("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := udp.NewServer(options.WithMux(router))
	go func() { _ = srv.Serve(lis) }()
	b.Cleanup(func() { srv.Stop(); lis.Close() })
	return lis.LocalAddr().(*net.UDPAddr).AddrPort()
}

func ourServer(b *testing.B) (*Server, netip.AddrPort) {
	b.Helper()
	s, err := Listen("127.0.0.1:0", Config{Handler: benchHandler})
	if err != nil {
		b.Fatal(err)
	}
	s.Start()
	b.Cleanup(func() { s.Close() })
	return s, s.Addr()
}

// client is a raw CoAP client socket.
type client struct {
	conn *net.UDPConn
	srv  netip.AddrPort
	mid  uint16
	req  []byte
	buf  []byte
}

func newClient(b *testing.B, srv netip.AddrPort, code codes.Code) *client {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	opts := message.Options{{ID: message.URIPath, Value: []byte("rd")}}
	req, err := encode(nil, message.Message{Type: message.Confirmable, Code: code, Token: []byte{1, 2, 3, 4}, Options: opts})
	if err != nil {
		b.Fatal(err)
	}
	return &client{conn: c, srv: srv, req: req, buf: make([]byte, 2048)}
}

// exchange sends one CON request with a new Message ID and token and
// reads the answer.
func (c *client) exchange(b *testing.B) {
	c.mid++
	c.req[2], c.req[3] = byte(c.mid>>8), byte(c.mid)
	c.req[6], c.req[7] = byte(c.mid>>8), byte(c.mid)
	if _, err := c.conn.WriteToUDPAddrPort(c.req, c.srv); err != nil {
		b.Fatal(err)
	}
	if _, _, err := c.conn.ReadFromUDPAddrPort(c.buf); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkExchange(b *testing.B) {
	for _, srv := range []string{"coapudp", "go-coap"} {
		for _, op := range []struct {
			name string
			code codes.Code
		}{{"POST", codes.POST}, {"GET-1KiB-block", codes.GET}} {
			b.Run(srv+"/"+op.name, func(b *testing.B) {
				var addr netip.AddrPort
				if srv == "go-coap" {
					addr = goCoapServer(b)
				} else {
					_, addr = ourServer(b)
				}
				c := newClient(b, addr, op.code)
				b.ReportAllocs()
				for b.Loop() {
					c.exchange(b)
				}
			})
		}
	}
}

// BenchmarkIdlePeer measures what the server keeps per peer that made one
// exchange (a registration, POST /rd) and then went quiet: heap and
// goroutines, per peer. For coapudp, "expired" is the same after
// EXCHANGE_LIFETIME (the duplicate-detection entry dropped).
func BenchmarkIdlePeer(b *testing.B) {
	const peers = 2000
	for _, srv := range []string{"coapudp", "go-coap"} {
		b.Run(srv, func(b *testing.B) {
			for b.Loop() {
				var addr netip.AddrPort
				var s *Server
				if srv == "go-coap" {
					addr = goCoapServer(b)
				} else {
					s, addr = ourServer(b)
				}
				clients := make([]*client, peers)
				for i := range clients {
					clients[i] = newClient(b, addr, codes.POST)
				}
				heap0, g0 := heapNow(), runtime.NumGoroutine()
				for _, c := range clients {
					c.exchange(b)
				}
				heap1, g1 := heapNow(), runtime.NumGoroutine()
				b.ReportMetric(float64(heap1-heap0)/peers, "heapB/peer")
				b.ReportMetric(float64(g1-g0)/peers, "goroutines/peer")
				if s != nil {
					// Expire the entries as the wheel would after 247 s.
					for i := range s.shards {
						sh := &s.shards[i]
						sh.mu.Lock()
						sh.expireLocked(s.sec() + int64(DefaultExchangeLifetime/time.Second) + 1)
						sh.mu.Unlock()
					}
					b.ReportMetric(float64(heapNow()-heap0)/peers, "heapB/peer-expired")
				}
				for _, c := range clients {
					c.conn.Close()
				}
			}
		})
	}
}

func heapNow() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
