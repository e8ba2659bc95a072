package coapudp

import (
	"context"
	"errors"
	"net/netip"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
)

var errTokenInUse = errors.New("coapudp: token in use by another request or observation")

// Observation is an observation the server made on a peer's resource (RFC
// 7641, client side), known by its token.
type Observation struct {
	s     *Server
	peer  netip.AddrPort
	token string
	opts  message.Options // the registration's options, for Cancel
	fn    NotifyFunc
}

// NotifyFunc receives a notification n of an observation. It runs in a
// reader goroutine, with no handler or other callback of the same peer at
// the same time (so an observation's notifications come one at a time);
// n is valid only during the call. A CON notification is answered when
// ack is called: now, or later from any goroutine (say once what n
// reported is journaled), without holding up the reader meanwhile. ack
// must be called for every CON notification, the ones the callback drops
// included; later calls do nothing, and for a NON notification it does
// nothing. While the answer is pending, a copy of the notification the
// peer retransmits is dropped. Once ack(true) sent the ACK, a copy gets
// the same ACK without a call (until ExchangeLifetime); after ack(false)
// nothing is sent and the next copy is handled as new, so a notification
// the receiver could not keep (its journal failed) comes again with the
// peer's retransmission.
type NotifyFunc func(n *message.Message, ack func(ok bool))

// Observe sends req (a GET; the server adds Observe=0) to peer as Do does
// and returns the observation with the first response. Every later
// notification under its token goes to fn (see NotifyFunc: a CON one is
// acknowledged when fn calls its ack, so that what fn makes durable is
// durable before the peer learns it arrived). fn may be called before
// Observe returns. When the response is not a success with an Observe
// option, the peer did not register the observation: Observe returns the
// response and a nil Observation.
func (s *Server) Observe(ctx context.Context, peer netip.AddrPort, req *message.Message, fn NotifyFunc) (*Observation, *message.Message, error) {
	peer = unmap(peer)
	opts, err := req.Options.Clone()
	if err != nil {
		return nil, nil, err
	}
	token := req.Token
	if len(token) == 0 {
		token = newToken()
	}
	o := &Observation{s: s, peer: peer, token: string(token), opts: opts, fn: fn}
	sh := s.shardOf(peer)
	sh.mu.Lock()
	if _, busy := sh.obs[o.token]; busy {
		sh.mu.Unlock()
		return nil, nil, errTokenInUse
	}
	sh.obs[o.token] = o
	sh.mu.Unlock()
	m := *req
	m.Token = token
	m.Options = o.observeOptions(0)
	res, err := s.Do(ctx, peer, &m)
	if err == nil && res.Code>>5 == 2 && res.Options.HasOption(message.Observe) {
		return o, res, nil
	}
	o.Forget()
	return nil, res, err
}

// observeOptions returns a copy of the registration's options with the
// Observe option set to v.
func (o *Observation) observeOptions(v uint32) message.Options {
	opts := make(message.Options, len(o.opts), len(o.opts)+1)
	copy(opts, o.opts)
	return opts.Set(UintOption(message.Observe, v))
}

// Token is the observation's token.
func (o *Observation) Token() message.Token { return message.Token(o.token) }

// Peer is the observed peer.
func (o *Observation) Peer() netip.AddrPort { return o.peer }

// Forget ends the observation on this side only: the next notification
// under its token gets an RST, which ends it on the peer (RFC 7641 3.6).
func (o *Observation) Forget() {
	sh := o.s.shardOf(o.peer)
	sh.mu.Lock()
	if sh.obs[o.token] == o {
		delete(sh.obs, o.token)
	}
	sh.mu.Unlock()
}

// Cancel forgets the observation and deregisters it on the peer with a GET
// carrying Observe=1 under the same token and options (RFC 7641 3.6),
// returning the peer's response.
func (o *Observation) Cancel(ctx context.Context) (*message.Message, error) {
	o.Forget()
	return o.s.Do(ctx, o.peer, &message.Message{Code: codes.GET, Token: message.Token(o.token), Options: o.observeOptions(1)})
}
