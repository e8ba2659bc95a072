package lwm2m

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"sync"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/mux"

	"github.com/otafleet/otafleet/transport/coapudp"
)

// Conversations with devices.
//
// Plain CoAP is served by transport/coapudp: one socket, a few reader
// goroutines, and no connection, goroutine or response cache per device (a
// device's conversation is its address). DTLS stays on go-coap and
// pion/dtls, a session per device. A conv hides the difference from the
// rest of the server: requests go out as a coapReq and every message the
// server reads (a request, an answer, a notification) is a plain
// *message.Message that owns its memory, or is valid only during the
// call that hands it over where that is said.

// conv is the conversation with one device. Its values are comparable:
// two are equal when they are the same conversation.
type conv interface {
	// addr is the device's address ("ip:port").
	addr() string
	// identity is the PSK identity of a DTLS session; false for plain
	// CoAP.
	identity() (string, bool)
	// do sends req to reg's device and returns its answer; errStale when
	// the device answered from its duplicate cache (send it again).
	do(ctx context.Context, reg *registration, req coapReq) (*message.Message, error)
	// observe observes req's path (a GET) and returns the observation (nil
	// when the device did not take it) and the first answer, when it came
	// apart from the notifications: every notification, and on DTLS the
	// first answer too, goes to fn. ctx bounds the request only.
	observe(ctx context.Context, reg *registration, req coapReq, fn notifyFunc) (*observation, *message.Message, error)
}

// notifyFunc receives an observation's notification. A confirmable one is
// acknowledged when ack(true) is called (once what it reported is durable),
// and left unacknowledged by ack(false) (the engine could not journal it:
// the device sends it again); one of them must be called for every
// notification, dropped ones included; n is valid only during the call.
// Over DTLS go-coap acknowledges a notification once ack is called, either
// way.
type notifyFunc func(n *message.Message, ack func(ok bool))

// errStale: the device answered the request from its duplicate cache (it
// saw the Message ID from the process before this one): the request was not
// carried out and goes again.
var errStale = errors.New("lwm2m: answered from the device's duplicate cache")

// coapReq is a request to a device.
type coapReq struct {
	code    codes.Code
	path    string
	cf      message.MediaType // of payload
	payload []byte            // nil: no payload
	opts    []message.Option
}

// observation is an observation the server made on a device's resource.
type observation struct {
	cancelFn func(ctx context.Context) error
	ended    func() bool // the observation ended on its own (DTLS); nil: never
	mu       sync.Mutex
	done     bool
}

// cancel ends the observation, on the device too.
func (o *observation) cancel(ctx context.Context) error {
	o.mu.Lock()
	done := o.done
	o.done = true
	o.mu.Unlock()
	if done {
		return nil
	}
	return o.cancelFn(ctx)
}

// canceled tells whether the observation has ended.
func (o *observation) canceled() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.done || (o.ended != nil && o.ended())
}

// udpConv is a plain-CoAP device: its address on the coapudp server.
type udpConv struct {
	srv  *coapudp.Server
	peer netip.AddrPort
}

func (c udpConv) addr() string             { return c.peer.String() }
func (c udpConv) identity() (string, bool) { return "", false }

// message builds req as a CoAP message (coapudp sets type, Message ID and
// token).
func (req coapReq) message() (*message.Message, error) {
	buf := make([]byte, len(req.path)+8)
	opts, _, err := message.Options{}.SetPath(buf, req.path)
	if err != nil {
		return nil, err
	}
	if req.payload != nil {
		opts = opts.Add(coapudp.UintOption(message.ContentFormat, uint32(req.cf)))
	}
	for _, o := range req.opts {
		opts = opts.Add(o)
	}
	return &message.Message{Code: req.code, Options: opts, Payload: req.payload}, nil
}

func (c udpConv) do(ctx context.Context, _ *registration, req coapReq) (*message.Message, error) {
	m, err := req.message()
	if err != nil {
		return nil, err
	}
	res, err := c.srv.Do(ctx, c.peer, m)
	if errors.Is(err, coapudp.ErrStaleAnswer) {
		return nil, errStale // coapudp moved the peer's Message IDs on
	}
	return res, err
}

func (c udpConv) observe(ctx context.Context, _ *registration, req coapReq, fn notifyFunc) (*observation, *message.Message, error) {
	m, err := req.message()
	if err != nil {
		return nil, nil, err
	}
	o, first, err := c.srv.Observe(ctx, c.peer, m, coapudp.NotifyFunc(fn))
	if errors.Is(err, coapudp.ErrStaleAnswer) {
		return nil, nil, errStale
	}
	if o == nil {
		return nil, first, err
	}
	return &observation{cancelFn: func(ctx context.Context) error {
		_, err := o.Cancel(ctx)
		return err
	}}, first, nil
}

// dtlsConv is a DTLS session (go-coap).
type dtlsConv struct{ c mux.Conn }

func (c dtlsConv) addr() string             { return c.c.RemoteAddr().String() }
func (c dtlsConv) identity() (string, bool) { return pskIdentity(c.c) }

// request builds req on the session.
func (c dtlsConv) request(ctx context.Context, req coapReq) (*pool.Message, error) {
	var body io.ReadSeeker
	if req.payload != nil {
		body = bytes.NewReader(req.payload)
	}
	switch req.code {
	case codes.GET:
		return c.c.NewGetRequest(ctx, req.path, req.opts...)
	case codes.PUT:
		return c.c.NewPutRequest(ctx, req.path, req.cf, body, req.opts...)
	case codes.POST:
		return c.c.NewPostRequest(ctx, req.path, req.cf, body, req.opts...)
	}
	return nil, errors.New("lwm2m: unsupported request method " + req.code.String())
}

func (c dtlsConv) do(ctx context.Context, reg *registration, req coapReq) (*message.Message, error) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r, err := c.request(rctx, req)
	if err != nil {
		return nil, err
	}
	defer c.c.ReleaseMessage(r)
	in := reg.track(r, cancel)
	res, err := c.c.Do(r)
	reg.untrack(in)
	if err != nil {
		if in.stale.Load() {
			reg.mids.Add(midJump)
			return nil, errStale
		}
		return nil, err
	}
	m, err := ownMessage(res)
	c.c.ReleaseMessage(res)
	return m, err
}

// observe runs fn for the first answer too (go-coap hands it to the
// observation's callback, possibly after DoObserve returned), and waits in
// go-coap's callback until fn acknowledges a notification: go-coap sends
// the ACK of a confirmable one when its callback returns.
func (c dtlsConv) observe(ctx context.Context, reg *registration, req coapReq, fn notifyFunc) (*observation, *message.Message, error) {
	// go-coap keeps the request's context for the observation's life.
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r, err := c.c.NewObserveRequest(rctx, req.path, req.opts...)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	in := reg.track(r, cancel)
	obs, err := c.c.DoObserve(r, func(n *pool.Message) {
		m, err := ownMessage(n)
		if err != nil {
			return
		}
		acked := make(chan struct{})
		var once sync.Once
		fn(m, func(bool) { once.Do(func() { close(acked) }) })
		<-acked
	})
	reg.untrack(in)
	c.c.ReleaseMessage(r)
	if err != nil {
		if in.stale.Load() {
			reg.mids.Add(midJump)
			err = errStale
		}
		cancel()
		return nil, nil, err
	}
	return &observation{cancelFn: func(ctx context.Context) error { return obs.Cancel(ctx) }, ended: obs.Canceled}, nil, nil
}

// ownMessage copies a go-coap message into one that owns its memory (at
// most 1 MiB of body).
func ownMessage(p *pool.Message) (*message.Message, error) {
	opts, err := p.Options().Clone()
	if err != nil {
		return nil, err
	}
	m := &message.Message{Code: p.Code(), Token: append(message.Token(nil), p.Token()...), Options: opts, Type: p.Type(), MessageID: p.MessageID()}
	if b := p.Body(); b != nil {
		if _, err := b.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
		if m.Payload, err = io.ReadAll(io.LimitReader(b, 1<<20)); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// request is a request a device sent, from either listener.
type request struct {
	conv conv
	msg  *message.Message // valid only until the handler returns
	ctx  context.Context
	udp  *coapudp.ResponseWriter // plain CoAP
	dtls mux.ResponseWriter      // DTLS
}

// replyFunc answers a request.
type replyFunc func(code codes.Code, cf message.MediaType, payload []byte, opts ...message.Option)

// answer sets the request's answer: before the handler returns, since its
// payload and options may be used until then.
func (rq *request) answer(code codes.Code, cf message.MediaType, payload []byte, opts ...message.Option) {
	if rq.udp != nil {
		rq.udp.SetResponse(code, cf, payload, opts...)
		return
	}
	var body io.ReadSeeker
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	_ = rq.dtls.SetResponse(code, cf, body, opts...)
}

// later hands the answer over to work that may outlast the handler: on
// plain CoAP the reader goes on meanwhile (coapudp sends the deferred
// answer when it is given); async tells the caller to run that work on a
// goroutine of its own. A DTLS session's handler runs on the session's own
// goroutine, which waits (go-coap answers when the handler returns), so
// its work runs inline and answers as answer does.
func (rq *request) later() (reply replyFunc, async bool) {
	if rq.udp != nil {
		return rq.udp.Defer().Send, true
	}
	return rq.answer, false
}
