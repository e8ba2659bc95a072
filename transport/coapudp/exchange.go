package coapudp

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/otafleet/otafleet/internal/clock"
)

// exchange is an outgoing CON request in flight. Its fields after done are
// guarded by its shard's lock.
type exchange struct {
	peer    netip.AddrPort
	mid     uint16
	token   string
	wire    []byte // the encoded request, for retransmission
	tries   int
	timeout time.Duration
	timer   clock.Timer
	acked   bool // an empty ACK came: a separate response follows
	over    bool
	done    chan struct{}
	res     *message.Message
	err     error
}

// finishLocked ends ex with res or err and forgets it. sh.mu is held.
func (sh *shard) finishLocked(ex *exchange, res *message.Message, err error) {
	if ex.over {
		return
	}
	ex.over, ex.res, ex.err = true, res, err
	if ex.timer != nil {
		ex.timer.Stop()
	}
	if sh.acks[peerMID{ex.peer, ex.mid}] == ex {
		delete(sh.acks, peerMID{ex.peer, ex.mid})
	}
	if sh.tokens[ex.token] == ex {
		delete(sh.tokens, ex.token)
	}
	ex.wire = nil
	close(ex.done)
}

// newToken returns a random 8-byte token.
func newToken() message.Token {
	t := make(message.Token, 8)
	binary.BigEndian.PutUint64(t, rand.Uint64())
	return t
}

// Do sends req to peer as a CON request and returns the response. The
// server sets the request's type and Message ID (the next of the peer's
// sequence) and, when req has none, a random token. The request is
// retransmitted until it is acknowledged (Config: ACKTimeout,
// ACKRandomFactor, MaxRetransmit); after an empty ACK the response comes
// separately. Do returns ErrTimeout, ErrReset, ErrStaleAnswer, ErrClosed or
// ctx's error when no response comes. The response owns its memory.
func (s *Server) Do(ctx context.Context, peer netip.AddrPort, req *message.Message) (*message.Message, error) {
	ex, err := s.begin(peer, req)
	if err != nil {
		return nil, err
	}
	return s.wait(ctx, ex)
}

// begin sends req to peer and files its exchange.
func (s *Server) begin(peer netip.AddrPort, req *message.Message) (*exchange, error) {
	peer = unmap(peer)
	token := req.Token
	if len(token) == 0 {
		token = newToken()
	}
	sh := s.shardOf(peer)
	ex := &exchange{peer: peer, token: string(token), done: make(chan struct{})}
	f := 1 + rand.Float64()*(s.cfg.ACKRandomFactor-1)
	ex.timeout = time.Duration(float64(s.cfg.ACKTimeout) * f)
	sh.mu.Lock()
	if _, busy := sh.tokens[ex.token]; busy {
		sh.mu.Unlock()
		return nil, errTokenInUse
	}
	for {
		ex.mid = sh.nextMIDLocked(peer, s.sec(), s.lifetime())
		if _, busy := sh.acks[peerMID{peer, ex.mid}]; !busy {
			break
		}
	}
	m := *req
	m.Token, m.Type, m.MessageID = token, message.Confirmable, int32(ex.mid)
	wire, err := encode(nil, m)
	if err != nil {
		sh.mu.Unlock()
		return nil, err
	}
	ex.wire = wire
	sh.acks[peerMID{peer, ex.mid}] = ex
	sh.tokens[ex.token] = ex
	ex.timer = s.cfg.Clock.AfterFunc(ex.timeout, func() { s.expire(sh, ex) })
	sh.mu.Unlock()
	s.ensureTick()
	s.send(peer, wire)
	return ex, nil
}

// wait waits for ex's end or ctx's.
func (s *Server) wait(ctx context.Context, ex *exchange) (*message.Message, error) {
	select {
	case <-ex.done:
	case <-ctx.Done():
		sh := s.shardOf(ex.peer)
		sh.mu.Lock()
		sh.finishLocked(ex, nil, ctx.Err())
		sh.mu.Unlock()
	}
	return ex.res, ex.err
}

// expire is ex's timer: retransmit, or give up.
func (s *Server) expire(sh *shard, ex *exchange) {
	sh.mu.Lock()
	if ex.over {
		sh.mu.Unlock()
		return
	}
	if ex.acked || ex.tries >= s.cfg.MaxRetransmit {
		sh.finishLocked(ex, nil, ErrTimeout)
		sh.mu.Unlock()
		return
	}
	ex.tries++
	ex.timeout *= 2
	ex.timer.Reset(ex.timeout)
	wire := ex.wire
	sh.mu.Unlock()
	s.send(ex.peer, wire)
}

// reset handles an RST: it ends the request it rejects.
func (s *Server) reset(peer netip.AddrPort, mid uint16) {
	sh := s.shardOf(peer)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if ex := sh.acks[peerMID{peer, mid}]; ex != nil {
		sh.finishLocked(ex, nil, ErrReset)
	}
}

// ack handles an ACK: empty, it tells a request to wait for a separate
// response; with a response under the request's token, it ends it; under
// another token it is the peer's cached answer to an earlier request with
// the same Message ID (ErrStaleAnswer). An ACK matching no request is
// dropped.
func (s *Server) ack(peer netip.AddrPort, b []byte, m *message.Message) {
	sh := s.shardOf(peer)
	k := peerMID{peer, uint16(m.MessageID)}
	sh.mu.Lock()
	ex := sh.acks[k]
	switch {
	case ex == nil:
		sh.mu.Unlock()
		s.cfg.Logger.Debug("coapudp: unmatched ACK dropped", "peer", peer.String(), "mid", m.MessageID)
		return
	case m.Code == codes.Empty:
		ex.acked = true
		delete(sh.acks, k)
		ex.timer.Reset(s.cfg.SeparateTimeout)
		sh.mu.Unlock()
		return
	case string(m.Token) != ex.token:
		if q := sh.seqs[peer]; q != nil {
			q.next += midJump
		}
		sh.finishLocked(ex, nil, ErrStaleAnswer)
		sh.mu.Unlock()
		return
	}
	sh.mu.Unlock()
	res, err := decodeCopy(b, len(m.Options))
	sh.mu.Lock()
	sh.finishLocked(ex, res, err)
	sh.mu.Unlock()
}

// response handles a CON or NON response: a separate response to a
// request, or a notification of an observation; anything else is rejected
// with an RST (unless Config.Unmatched takes it). A CON one is
// acknowledged after it is handled (a notification: when its callback
// calls ack), and recognised when it comes again; a NON one is recognised
// for NonLifetime.
func (s *Server) response(r *reader, peer netip.AddrPort, b []byte, m *message.Message) {
	con := m.Type == message.Confirmable
	mid := uint16(m.MessageID)
	var e *seen
	if con {
		if e = s.dup(peer, mid); e == nil {
			return
		}
	} else if !s.firstNON(peer, mid) {
		return
	}
	sh := s.shardOf(peer)
	sh.mu.Lock()
	ex := sh.tokens[string(m.Token)]
	var o *Observation
	if ex == nil || ex.peer != peer {
		ex = nil
		if o = sh.obs[string(m.Token)]; o != nil && o.peer != peer {
			o = nil
		}
	}
	sh.mu.Unlock()
	accepted := true
	switch {
	case ex != nil:
		res, err := decodeCopy(b, len(m.Options))
		sh.mu.Lock()
		sh.finishLocked(ex, res, err)
		sh.mu.Unlock()
	case o != nil:
		ack := noAck
		if con {
			ack = s.acker(peer, mid, e)
		}
		order := s.lockOrder(peer)
		o.fn(m, ack)
		order.Unlock()
		return
	case len(m.Token) == 0:
		// A response without a token answers nothing this server sent
		// (its requests and observations always carry one): acknowledged
		// and dropped, never reset. A Reset is an empty message, and a
		// peer that answers it as a request (go-coap's client does, with
		// a 4.05 in a new CON message) would answer our Reset of that
		// 4.05 again, and so on: a device and a node exchanged some 3,000
		// datagrams a second that way after a cluster node died.
	case s.cfg.Unmatched != nil:
		order := s.lockOrder(peer)
		accepted = s.cfg.Unmatched(peer, m)
		order.Unlock()
	default:
		accepted = false
	}
	var out []byte
	switch {
	case accepted && con:
		out = encodeEmpty(r.out[:0], message.Acknowledgement, mid)
	case !accepted:
		// RFC 7641 3.6: reject a notification nobody is interested in.
		out = encodeEmpty(r.out[:0], message.Reset, mid)
	}
	if e != nil {
		s.answered(peer, e, out)
	}
	if out != nil {
		s.send(peer, out)
	}
}

// forget drops the duplicate-detection entry e of peer's CON message mid,
// left unanswered: a copy of the message is handled again, as new.
func (s *Server) forget(peer netip.AddrPort, mid uint16, e *seen) {
	sh := s.shardOf(peer)
	k := peerMID{peer, mid}
	sh.mu.Lock()
	if sh.dedup[k] == e {
		delete(sh.dedup, k)
	}
	sh.mu.Unlock()
}

// noAck is the ack of a NON notification.
func noAck(bool) {}

// acker returns the ack of the CON notification (peer, mid) whose
// duplicate-detection entry is e: its first call sends the empty ACK and
// records it as the answer to duplicates (ok), or forgets e (not ok).
func (s *Server) acker(peer netip.AddrPort, mid uint16, e *seen) func(ok bool) {
	var once atomic.Bool
	return func(ok bool) {
		if once.Swap(true) {
			return
		}
		if !ok {
			s.forget(peer, mid, e)
			return
		}
		out := encodeEmpty(make([]byte, 0, 4), message.Acknowledgement, mid)
		s.answered(peer, e, out)
		s.send(peer, out)
	}
}

// NextMessageID is the Message ID the next request to peer will carry; it
// starts the peer's sequence (at a random point) when there is none. With
// SetNextMessageID it lets a test replay what a restarted process meets: a
// peer that saw the same Message IDs from the process before it.
func (s *Server) NextMessageID(peer netip.AddrPort) uint16 {
	peer = unmap(peer)
	sh := s.shardOf(peer)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	mid := sh.nextMIDLocked(peer, s.sec(), s.lifetime())
	sh.seqs[peer].next = mid
	return mid
}

// SetNextMessageID makes mid the Message ID of the next request to peer.
func (s *Server) SetNextMessageID(peer netip.AddrPort, mid uint16) {
	peer = unmap(peer)
	sh := s.shardOf(peer)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.nextMIDLocked(peer, s.sec(), s.lifetime())
	sh.seqs[peer].next = mid
}
