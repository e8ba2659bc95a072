package lwm2m

import (
	"encoding/binary"
	"testing"
	"time"
)

// FuzzBodies: any sequence of blocks from a few peers is taken or refused,
// never a panic; no body in flight or made exceeds the bound, and the
// bodies in flight never exceed their number.
func FuzzBodies(f *testing.F) {
	// Each block: peer (1 byte), request (1), Block1 (3), Size1 (2), payload
	// length (2), seconds since the last (1).
	f.Add([]byte{0, 0, 0, 0, 0x0a, 0, 0, 0, 64, 0, 0, 0, 0, 0x1a, 0, 0, 0, 64, 0, 0, 0, 0, 0x22, 0, 0, 0, 10, 0})
	f.Add([]byte{1, 1, 0, 0, 0x0e, 0xff, 0xff, 0x04, 0x00, 0, 1, 1, 0xff, 0xff, 0xff, 0, 0, 0xff, 0xff, 200})
	f.Fuzz(func(t *testing.T, in []byte) {
		b := newBodies()
		b.maxPartial = 3
		now := t0
		payload := make([]byte, 1<<16)
		for len(in) >= 10 {
			peer := string(rune('a' + in[0]%5))
			request := []string{"rd?ep=d1", "rd/1"}[in[1]%2]
			block := uint32(in[2])<<16 | uint32(in[3])<<8 | uint32(in[4])
			size1 := int64(binary.BigEndian.Uint16(in[5:7])) - 1
			n := int(binary.BigEndian.Uint16(in[7:9])) % 1100
			now = now.Add(time.Duration(in[9]) * time.Second)
			in = in[10:]
			body, done, err := b.add(peer, request, block, size1, payload[:n], now)
			if err != nil && (done || body != nil) {
				t.Fatalf("refused, yet done %v with %d bytes", done, len(body))
			}
			if len(body) > maxRegistrationBody {
				t.Fatalf("a body of %d bytes", len(body))
			}
			b.mu.Lock()
			for k, p := range b.byPeer {
				if len(p.body) > maxRegistrationBody {
					t.Fatalf("peer %q has %d bytes in flight", k, len(p.body))
				}
			}
			if len(b.byPeer) > b.maxPartial {
				t.Fatalf("%d bodies in flight", len(b.byPeer))
			}
			b.mu.Unlock()
		}
	})
}
