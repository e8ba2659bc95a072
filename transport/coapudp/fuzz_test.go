package coapudp

import (
	"net/netip"
	"testing"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
)

// FuzzDatagram feeds arbitrary datagrams from a few peers to the inbound
// path: it must never panic, and the state it keeps stays within its caps.
func FuzzDatagram(f *testing.F) {
	seed := []message.Message{
		{Type: message.Confirmable, Code: codes.POST, MessageID: 1, Token: []byte{1}, Payload: []byte("</1/0>")},
		{Type: message.Confirmable, Code: codes.GET, MessageID: 2, Token: []byte{2}},
		{Type: message.NonConfirmable, Code: codes.Content, MessageID: 3, Token: []byte{3}},
		{Type: message.Acknowledgement, Code: codes.Empty, MessageID: 4},
		{Type: message.Reset, Code: codes.Empty, MessageID: 5},
		{Type: message.Confirmable, Code: codes.Empty, MessageID: 6},
	}
	for _, m := range seed {
		b, err := encode(nil, m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint8(0))
	}
	f.Add([]byte{0x40, 0x01, 0x00, 0x0d, 0xf0}, uint8(1))
	f.Add([]byte{0xff}, uint8(2))
	s, _ := newServer(&testing.T{}, Config{}) // closed by no one: the fuzz process ends
	s.cfg.MaxDedup = shardCount
	for i := range s.shards {
		s.shards[i].max = 1
	}
	// Answers go to a socket nobody reads.
	sink := newDevice(&testing.T{}, s.Addr())
	r := newReader()
	f.Fuzz(func(t *testing.T, b []byte, p uint8) {
		peer := netip.AddrPortFrom(sink.addr().Addr(), sink.addr().Port()+uint16(p%4))
		s.datagram(r, peer, b)
		if n := s.dedupEntries(); n > shardCount {
			t.Fatalf("%d duplicate-detection entries, cap %d", n, shardCount)
		}
		if n := s.peerState() - s.dedupEntries(); n != 0 {
			t.Fatalf("%d records of requests or observations made by datagrams alone", n)
		}
	})
}
