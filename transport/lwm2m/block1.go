package lwm2m

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"
)

// Block-wise registration bodies (RFC 7959 Block1).
//
// A device with many objects sends its registration's link-format body in
// blocks: each request carries a Block1 option (NUM, M, SZX) and the same
// URI and queries; the server answers 2.31 Continue to each block with M=1,
// and the registration's own answer to the last one:
//
//	POST /rd?ep=d1  Block1 0/M/64   </1/0>,</3/0>,...   → 2.31 Continue  Block1 0/M/64
//	POST /rd?ep=d1  Block1 1/M/64   ...,</5/0>,...      → 2.31 Continue  Block1 1/M/64
//	POST /rd?ep=d1  Block1 2/-/64   ...,</19/1>         → 2.01 Created   Block1 2/-/64
//
// go-coap's own block-wise layer (options.WithBlockwise(true, ...)) would
// reassemble these, but it bounds neither a body's size (up to 2^20 blocks
// of 1 KiB) nor the number of bodies in flight, and it would take over the
// Block2 answers that servePackage gives straight from the stored file. So
// the server reassembles registration bodies itself, within bounds:
//
//   - a body is at most maxRegistrationBody bytes (4.13, with Size1 telling
//     the limit, beyond; a Size1 announcing more is refused at once);
//   - a peer (address and transport) has at most one body in flight: a block
//     0 starts it anew, any other block must continue it where it stands or
//     repeat an earlier block (a retransmission), else 4.08;
//   - at most maxPartialBodies bodies are in flight in all; a body whose last
//     block is older than partialBodyTTL is dropped when room is needed, and
//     when none is that old a new body is refused with 5.03;
//   - blocks are matched by peer and request (path and queries), not by
//     token, as RFC 7959 section 2.5 allows a client to change tokens.
const (
	// maxRegistrationBody bounds a registration's (or update's) body, in
	// one datagram or in blocks.
	maxRegistrationBody = 16 << 10
	// maxPartialBodies bounds the block-wise bodies in flight (at most
	// maxRegistrationBody bytes each).
	maxPartialBodies = 512
	// partialBodyTTL is how long a body in flight waits for its next
	// block before its room may be taken.
	partialBodyTTL = time.Minute
)

// block1Error is a refused block, with the CoAP code of the answer.
type block1Error struct {
	code codes.Code
	why  string
}

func (e *block1Error) Error() string { return e.why }

// codeOf is the CoAP answer to a refused block: err's code, 4.00 for other
// errors.
func codeOf(err error) codes.Code {
	var be *block1Error
	if errors.As(err, &be) {
		return be.code
	}
	return codes.BadRequest
}

// partialBody is one peer's body in flight.
type partialBody struct {
	request string // path and queries of its blocks
	body    []byte
	last    time.Time // when its latest block came
}

// bodies reassembles the block-wise bodies of registrations. It is safe for
// concurrent use; it reads no clock (the caller passes the time).
type bodies struct {
	max, maxPartial int
	ttl             time.Duration

	mu     sync.Mutex
	byPeer map[string]*partialBody
}

func newBodies() *bodies {
	return &bodies{max: maxRegistrationBody, maxPartial: maxPartialBodies, ttl: partialBodyTTL, byPeer: map[string]*partialBody{}}
}

// add takes one block of a request from peer: block is the Block1 option's
// value, size1 the Size1 option's (-1 without one), payload the block's
// bytes. It returns the whole body once the last block is in (done), or
// nothing while more blocks are to come; a refused block is a
// *block1Error, and drops the peer's body in flight.
func (b *bodies) add(peer, request string, block uint32, size1 int64, payload []byte, now time.Time) (body []byte, done bool, err error) {
	num, more, szx := int64(block>>4), block&8 != 0, block&7
	if block > 0xffffff {
		return nil, false, &block1Error{codes.BadOption, fmt.Sprintf("Block1 %#x: more than 3 bytes", block)}
	}
	if szx == 7 {
		return nil, false, &block1Error{codes.BadOption, "Block1 SZX 7 (BERT) is for reliable transports only"}
	}
	size := int64(1) << (szx + 4)
	off := num * size
	b.mu.Lock()
	defer b.mu.Unlock()
	refuse := func(code codes.Code, format string, args ...any) ([]byte, bool, error) {
		delete(b.byPeer, peer)
		return nil, false, &block1Error{code, fmt.Sprintf(format, args...)}
	}
	switch {
	case size1 > int64(b.max):
		return refuse(codes.RequestEntityTooLarge, "body of %d bytes announced, at most %d", size1, b.max)
	case more && int64(len(payload)) != size:
		return refuse(codes.BadRequest, "block %d of %d bytes carries %d: all but the last block are full", num, size, len(payload))
	case off+int64(len(payload)) > int64(b.max):
		return refuse(codes.RequestEntityTooLarge, "body of more than %d bytes", b.max)
	}
	p := b.byPeer[peer]
	if p != nil && (p.request != request || now.Sub(p.last) > b.ttl) && num == 0 {
		p = nil // another request, or a stale one: block 0 starts anew
	}
	switch {
	case num == 0 && !more:
		delete(b.byPeer, peer)
		return payload, true, nil
	case num == 0:
		if p == nil {
			if err := b.roomLocked(peer, now); err != nil {
				return nil, false, err
			}
		}
		p = &partialBody{request: request, body: make([]byte, 0, size)}
		b.byPeer[peer] = p
	case p == nil || p.request != request:
		return refuse(codes.RequestEntityIncomplete, "block %d of a body whose block 0 was not received", num)
	case off > int64(len(p.body)):
		return refuse(codes.RequestEntityIncomplete, "block %d at byte %d, but %d bytes were received", num, off, len(p.body))
	}
	// off ≤ len(p.body): the next block, or a retransmission of an
	// earlier one (which replaces what followed it).
	p.body = append(p.body[:off], payload...)
	p.last = now
	if more {
		return nil, false, nil
	}
	delete(b.byPeer, peer)
	return p.body, true, nil
}

// roomLocked makes room for a new body of peer: it drops the stale bodies
// when all room is taken, and refuses with 5.03 when none is stale.
func (b *bodies) roomLocked(peer string, now time.Time) error {
	if _, ok := b.byPeer[peer]; ok || len(b.byPeer) < b.maxPartial {
		return nil
	}
	for k, p := range b.byPeer {
		if now.Sub(p.last) > b.ttl {
			delete(b.byPeer, k)
		}
	}
	if len(b.byPeer) >= b.maxPartial {
		return &block1Error{codes.ServiceUnavailable, fmt.Sprintf("%d block-wise bodies in flight, at most %d", len(b.byPeer), b.maxPartial)}
	}
	return nil
}

// inFlight is the number of bodies in flight (tests).
func (b *bodies) inFlight() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.byPeer)
}
