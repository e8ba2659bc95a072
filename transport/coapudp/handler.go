package coapudp

import (
	"net/netip"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
)

// Handler answers an incoming request by setting a response on w before it
// returns. It runs in a reader goroutine; r.Msg (its options, token and
// payload) and w are valid only until it returns. A handler that sets no
// response leaves a CON request with an empty ACK and a NON one unanswered.
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
	set     bool
	code    codes.Code
	opts    message.Options
	payload []byte
	buf     []byte // option values
}

func (w *ResponseWriter) reset() {
	w.set, w.code, w.opts, w.payload, w.buf = false, 0, w.opts[:0], nil, w.buf[:0]
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
