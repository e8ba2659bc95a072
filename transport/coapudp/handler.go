package coapudp

import (
	"net/netip"
	"sync/atomic"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
)

// Handler answers an incoming request by setting a response on w before it
// returns, or by taking the answer over with w.Defer and sending it later.
// It runs in a reader goroutine, with no other handler or observation
// callback of the same peer at the same time; r.Msg (its options, token and
// payload) and w are valid only until it returns. A handler that sets no
// response (and does not defer) leaves a CON request with an empty ACK and
// a NON one unanswered. A handler that has to wait (for the journal, for
// the peer) defers, so that it holds up neither its reader nor its peer.
type Handler func(w *ResponseWriter, r *Request)

// Request is an incoming request.
type Request struct {
	// Peer is the address the request came from (IPv4 addresses unmapped).
	Peer netip.AddrPort
	// Msg is the decoded request; it aliases the reader's buffer.
	Msg *message.Message
}

// ResponseWriter collects a handler's response. The server encodes it when
// the handler returns.
type ResponseWriter struct {
	// the request answered, for Defer
	s        *Server
	peer     netip.AddrPort
	con      bool
	mid      uint16
	token    message.Token
	e        *seen
	deferred bool

	set     bool
	code    codes.Code
	opts    message.Options
	payload []byte
	buf     []byte // option values
}

func (w *ResponseWriter) reset() {
	w.set, w.code, w.opts, w.payload, w.buf = false, 0, w.opts[:0], nil, w.buf[:0]
	w.deferred = false
}

// Defer takes the answer out of the handler's hands: nothing is sent when
// the handler returns, and the answer goes out when the returned Reply's
// Send is called, from any goroutine, at any later time (a response set on
// w before or after Defer is ignored). It is still piggybacked on the ACK
// of a CON request, so every client understands it; the price is that a
// peer whose ACK_TIMEOUT runs out first retransmits. Such a duplicate of a
// request other than GET and FETCH is swallowed while the answer is
// pending and gets the same answer once it is sent; a duplicate GET or
// FETCH is handed to the handler again, as always. An answer that is never
// sent leaves the request unanswered (its duplicate-detection entry
// expires as any other).
func (w *ResponseWriter) Defer() *Reply {
	w.deferred = true
	return &Reply{s: w.s, peer: w.peer, con: w.con, mid: w.mid, token: append(message.Token(nil), w.token...), e: w.e}
}

// Reply is the deferred answer to one request (ResponseWriter.Defer).
type Reply struct {
	s     *Server
	peer  netip.AddrPort
	con   bool
	mid   uint16
	token message.Token
	e     *seen
	sent  atomic.Bool
}

// Send sends the answer, as ResponseWriter.SetResponse describes it; code
// codes.Empty sends an empty ACK to a CON request and nothing to a NON
// one. Only the first call sends; Send may be called from any goroutine,
// and the payload and option values are not used after it returns.
func (r *Reply) Send(code codes.Code, cf message.MediaType, payload []byte, opts ...message.Option) {
	if r.sent.Swap(true) {
		return
	}
	var w ResponseWriter
	if code != codes.Empty {
		w.SetResponse(code, cf, payload, opts...)
	}
	r.s.answer(&w, r.peer, r.con, r.mid, r.token, r.e, nil)
}

// SetResponse sets the response: its code, its options and its payload
// with content format cf (a Content-Format option is added only when
// payload is not nil). The options' values and the payload must stay
// unchanged until the handler returns. A second call replaces the first.
func (w *ResponseWriter) SetResponse(code codes.Code, cf message.MediaType, payload []byte, opts ...message.Option) {
	w.set, w.code, w.payload, w.opts, w.buf = true, code, payload, w.opts[:0], w.buf[:0]
	if payload != nil {
		w.buf = appendUint(w.buf, uint32(cf))
		w.opts = w.opts.Add(message.Option{ID: message.ContentFormat, Value: w.buf})
	}
	for _, o := range opts {
		w.opts = w.opts.Add(o)
	}
}

// encode appends the response to buf as a message of type t.
func (w *ResponseWriter) encode(buf []byte, t message.Type, mid uint16, token message.Token) []byte {
	out, err := encode(buf, message.Message{Token: token, Options: w.opts, Code: w.code, Payload: w.payload, MessageID: int32(mid), Type: t})
	if err != nil {
		// A response the codec cannot encode (an option too long): the
		// handler's bug, answered as such.
		out, _ = encode(buf, message.Message{Token: token, Code: codes.InternalServerError, MessageID: int32(mid), Type: t})
	}
	return out
}

// appendUint appends v in CoAP's minimal uint option encoding.
func appendUint(buf []byte, v uint32) []byte {
	switch {
	case v == 0:
		return buf
	case v < 1<<8:
		return append(buf, byte(v))
	case v < 1<<16:
		return append(buf, byte(v>>8), byte(v))
	case v < 1<<24:
		return append(buf, byte(v>>16), byte(v>>8), byte(v))
	}
	return append(buf, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

// UintOption returns the option id with the uint value v.
func UintOption(id message.OptionID, v uint32) message.Option {
	return message.Option{ID: id, Value: appendUint(nil, v)}
}
