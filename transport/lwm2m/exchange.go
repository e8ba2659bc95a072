package lwm2m

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/mux"
)

// Message IDs after a restart (DTLS; coapudp does the same for plain
// CoAP, see coapudp.ErrStaleAnswer).
//
// A device drops a confirmable request whose Message ID it saw from the
// same address within EXCHANGE_LIFETIME (about 4 minutes, RFC 7252 4.5)
// and answers it from its duplicate cache: the answer to the old request,
// with the old token. A restarted server does not know which Message IDs
// the process before it used, and its random ones meet a recently used one
// now and then (in a 10,000-device --kill-at run, a few devices): the
// request is never carried out and its worker waits out RequestTimeout,
// holding every later request of the device (a PCP device that gets no
// segment gives up its download; a 0x17 or an Execute never runs). So the
// server sets each request's Message ID itself, and an acknowledgement
// that carries the Message ID of the request in flight but not its token
// (the device's cached answer, see staleAnswer) makes it send the request
// again, with a Message ID a quarter of the space further on.
const (
	staleRetries = 4
	midJump      = 0x4000
)

// inflight is the request a registration's worker waits on.
type inflight struct {
	mid    uint16
	cancel context.CancelFunc
	stale  atomic.Bool
}

// nextMID is the Message ID of the next request to reg's device: one
// sequence per registration, from a random start, as go-coap keeps one per
// conversation (a sequence shared by all devices would wrap within a
// device's EXCHANGE_LIFETIME in a large campaign).
func (reg *registration) nextMID() uint16 { return uint16(reg.mids.Add(1)) }

// roundTrip sends req on reg's conversation and returns the answer; it
// sends it again when the device answered it from its duplicate cache.
// ctx bounds each try.
func (s *Server) roundTrip(ctx context.Context, reg *registration, req coapReq) (*message.Message, error) {
	for try := 0; ; try++ {
		res, err := s.connOf(reg).do(ctx, reg, req)
		if !s.again(ctx, reg, err, try) {
			return res, err
		}
	}
}

// observeTrip is roundTrip for an observation.
func (s *Server) observeTrip(ctx context.Context, reg *registration, req coapReq, fn notifyFunc) (*observation, *message.Message, error) {
	for try := 0; ; try++ {
		obs, first, err := s.connOf(reg).observe(ctx, reg, req, fn)
		if !s.again(ctx, reg, err, try) {
			return obs, first, err
		}
	}
}

// track notes the DTLS request req, with the Message ID it gets here, as
// the one reg's worker waits on (see staleAnswer).
func (reg *registration) track(req *pool.Message, cancel context.CancelFunc) *inflight {
	in := &inflight{mid: reg.nextMID(), cancel: cancel}
	req.SetMessageID(int32(in.mid))
	reg.mu.Lock()
	reg.inflight = in
	reg.mu.Unlock()
	return in
}

func (reg *registration) untrack(in *inflight) {
	reg.mu.Lock()
	if reg.inflight == in {
		reg.inflight = nil
	}
	reg.mu.Unlock()
}

// again reports whether a request that ended with err must go again: the
// device answered it from its duplicate cache.
func (s *Server) again(ctx context.Context, reg *registration, err error, try int) bool {
	if !errors.Is(err, errStale) || try >= staleRetries || ctx.Err() != nil {
		return false
	}
	s.log.Info("lwm2m: the device answered a request from its duplicate cache (a Message ID of an earlier process); sent again",
		"device", reg.device)
	return true
}

// staleAnswer is handle's look at an acknowledgement that matched no
// request: one with the Message ID of the request in flight to the
// device registered at its address is the device's cached answer to an
// earlier request with that Message ID, so that request ends (and goes
// again, roundTrip). It reports whether it was one.
func (s *Server) staleAnswer(w mux.ResponseWriter, r *mux.Message) bool {
	if r.Type() != message.Acknowledgement {
		return false
	}
	s.mu.Lock()
	reg := s.byPeer[w.Conn().RemoteAddr().String()]
	s.mu.Unlock()
	if reg == nil || reg.conn != conv(dtlsConv{w.Conn()}) {
		return false
	}
	reg.mu.Lock()
	in := reg.inflight
	reg.mu.Unlock()
	if in == nil || uint16(r.MessageID()) != in.mid {
		return false
	}
	in.stale.Store(true)
	in.cancel()
	return true
}

// Request builders for roundTrip.

func getReq(path string, opts ...message.Option) coapReq {
	return coapReq{code: codes.GET, path: path, opts: opts}
}

func putReq(path string, cf message.MediaType, body []byte) coapReq {
	if body == nil {
		body = []byte{}
	}
	return coapReq{code: codes.PUT, path: path, cf: cf, payload: body}
}

func postReq(path string) coapReq {
	return coapReq{code: codes.POST, path: path}
}
