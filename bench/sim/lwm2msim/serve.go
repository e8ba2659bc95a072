package lwm2msim

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"

	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport/lwm2m/lwm2mcodec"
)

// Paths the device serves (messages names them for every side).
var (
	pathFwVersion  = mustPath(messages.PathFirmwareVersion)
	pathSwVersion  = mustPath(messages.PathSoftwareVersion)
	pathRSRP       = mustPath(messages.PathRSRP)
	pathCellID     = mustPath(messages.PathCellID)
	pathSINR       = mustPath(messages.PathSINR)
	pathPackageURI = mustPath(messages.PathPackageURI)
	pathUpdate     = mustPath(messages.PathUpdate)
	pathState      = mustPath(messages.PathFotaState)
	pathResult     = mustPath(messages.PathUpdateResult)
	pathUplink     = mustPath(messages.PathPCPUplink)   // PCP device → platform
	pathDownlink   = mustPath(messages.PathPCPDownlink) // PCP platform → device
)

// mustPath parses one of the paths of package messages; they are constants,
// so an error is a broken invariant.
func mustPath(s string) lwm2mcodec.Path {
	p, err := lwm2mcodec.ParsePath(s)
	if err != nil {
		panic(fmt.Sprintf("lwm2msim: path %q: %v", s, err))
	}
	return p
}

// noAccept marks a request without an Accept option.
const noAccept = -1

// observer is an observation the server made on the device.
type observer struct {
	token []byte
	path  lwm2mcodec.Path
	cf    uint16 // the content format of its notifications
	last  []byte // the payload last sent: a notification goes out on a change only
}

// outMsg is a notification waiting for the session's sender.
type outMsg struct {
	token   []byte
	path    lwm2mcodec.Path
	seq     uint32
	cf      uint16
	payload []byte
}

// serve handles one request of the server on session s. It never panics on
// the server's input; a handler that fails anyway answers 5.00.
func (d *Device) serve(s *session, w mux.ResponseWriter, r *mux.Message) {
	defer func() {
		if p := recover(); p != nil {
			d.log.Error("lwm2msim: handler panicked", "panic", fmt.Sprint(p))
			respond(w, codes.InternalServerError)
		}
	}()
	d.mu.Lock()
	dead := s.dead
	d.mu.Unlock()
	if dead {
		return // a restart closed the session: no answer
	}
	if r.Code() > 31 {
		// A response that matched no request of ours (a late answer): drop
		// it; answering it would start a ping-pong with the server.
		return
	}
	p, ok := requestPath(r)
	if !ok {
		respond(w, codes.NotFound)
		return
	}
	switch r.Code() {
	case codes.GET:
		obs, err := r.Options().Observe()
		switch {
		case err == nil && obs == 0:
			d.observe(s, w, r, p)
		case err == nil && obs == 1:
			d.cancelObserve(s, r, p)
			d.read(w, r, p)
		default:
			d.read(w, r, p)
		}
	case codes.PUT:
		d.write(s, w, r, p)
	case codes.POST:
		d.execute(w, p)
	case codes.DELETE:
		d.mu.Lock()
		_, code := d.lookupLocked(p)
		d.mu.Unlock()
		respondMissingOr(w, code, codes.MethodNotAllowed)
	default:
		respond(w, codes.MethodNotAllowed)
	}
}

// requestPath returns the request's LwM2M path ("/" without Uri-Path).
func requestPath(r *mux.Message) (lwm2mcodec.Path, bool) {
	s, err := r.Options().Path()
	if errors.Is(err, message.ErrOptionNotFound) {
		return lwm2mcodec.RootPath, true
	}
	if err != nil {
		return lwm2mcodec.Path{}, false
	}
	p, err := lwm2mcodec.ParsePath(s)
	return p, err == nil
}

func respond(w mux.ResponseWriter, code codes.Code) {
	_ = w.SetResponse(code, message.TextPlain, nil)
}

// respondMissingOr answers 4.04 when the lookup found nothing, else code.
func respondMissingOr(w mux.ResponseWriter, lookup, code codes.Code) {
	if lookup == codes.NotFound {
		respond(w, codes.NotFound)
		return
	}
	respond(w, code)
}

// accept returns the request's Accept option, or noAccept.
func accept(r *mux.Message) int {
	a, err := r.Options().Accept()
	if err != nil {
		return noAccept
	}
	return int(a)
}

// lookupLocked returns the values under p: Content when p exists (an
// instance or object may hold no value), NotFound, or MethodNotAllowed for
// the executable /5/0/2 and the root.
func (d *Device) lookupLocked(p lwm2mcodec.Path) ([]lwm2mcodec.Value, codes.Code) {
	switch {
	case p.Depth() == 0:
		return nil, codes.MethodNotAllowed
	case p == pathUpdate:
		return nil, codes.MethodNotAllowed
	}
	var out []lwm2mcodec.Value
	for _, v := range d.valuesLocked() {
		if p.Contains(v.Path) {
			out = append(out, v)
		}
	}
	if len(out) > 0 {
		return out, codes.Content
	}
	if p.Resource < 0 {
		for _, inst := range d.instances() {
			if p.Contains(inst) {
				return nil, codes.Content
			}
		}
	}
	return nil, codes.NotFound
}

// instances lists the object instances the device has.
func (d *Device) instances() []lwm2mcodec.Path {
	in := []lwm2mcodec.Path{
		lwm2mcodec.InstancePath(1, 0), lwm2mcodec.InstancePath(3, 0),
		lwm2mcodec.InstancePath(4, 0), lwm2mcodec.InstancePath(5, 0),
	}
	if d.cfg.ObjectsPCP {
		in = append(in, lwm2mcodec.InstancePath(19, 0), lwm2mcodec.InstancePath(19, 1))
	}
	return in
}

// valuesLocked returns every readable resource of the device.
func (d *Device) valuesLocked() []lwm2mcodec.Value {
	rp := lwm2mcodec.ResourcePath
	vs := []lwm2mcodec.Value{
		lwm2mcodec.IntValue(rp(1, 0, 0), 1), // Short Server ID
		lwm2mcodec.IntValue(rp(1, 0, 1), int64(d.cfg.Lifetime.Seconds())),
		lwm2mcodec.StringValue(rp(1, 0, 7), d.binding()),
		lwm2mcodec.StringValue(rp(3, 0, 0), "otafleet"),
		lwm2mcodec.StringValue(rp(3, 0, 1), "lwm2msim"),
		lwm2mcodec.StringValue(rp(3, 0, 2), d.cfg.Endpoint),
		lwm2mcodec.StringValue(pathFwVersion, d.fw),
		lwm2mcodec.StringValue(pathSwVersion, d.sw),
	}
	if d.cfg.RSRP != nil {
		vs = append(vs, lwm2mcodec.IntValue(pathRSRP, int64(*d.cfg.RSRP)))
	}
	if d.cfg.CellID != 0 {
		vs = append(vs, lwm2mcodec.IntValue(pathCellID, d.cfg.CellID))
	}
	if d.cfg.SINR != nil {
		vs = append(vs, lwm2mcodec.IntValue(pathSINR, int64(*d.cfg.SINR)))
	}
	vs = append(vs,
		lwm2mcodec.StringValue(pathPackageURI, d.fota.uri),
		lwm2mcodec.IntValue(pathState, int64(d.fota.state)),
		lwm2mcodec.IntValue(pathResult, int64(d.fota.result)),
	)
	if d.cfg.ObjectsPCP {
		vs = append(vs,
			lwm2mcodec.OpaqueValue(pathUplink, []byte{}),
			lwm2mcodec.OpaqueValue(pathDownlink, []byte{}),
		)
	}
	return vs
}

// formatFor chooses the content format of an answer: the Accept option if
// the device can encode the values in it, else the default (text/plain for
// a resource, opaque for an opaque resource, RadioFormat for more).
func (d *Device) formatFor(acc int, p lwm2mcodec.Path, vs []lwm2mcodec.Value) (uint16, bool) {
	leaf := p.IsLeaf() && len(vs) == 1
	if acc == noAccept {
		switch {
		case leaf && vs[0].Kind == lwm2mcodec.KindOpaque:
			return lwm2mcodec.FormatOpaque, true
		case leaf:
			return lwm2mcodec.FormatText, true
		default:
			return d.cfg.RadioFormat, true
		}
	}
	switch cf := uint16(acc); cf {
	case lwm2mcodec.FormatText:
		return cf, leaf
	case lwm2mcodec.FormatOpaque:
		return cf, leaf && vs[0].Kind == lwm2mcodec.KindOpaque
	case lwm2mcodec.FormatTLV, lwm2mcodec.FormatSenMLJSON, lwm2mcodec.FormatSenMLCBOR, lwm2mcodec.FormatLwM2MJSON:
		return cf, true
	case lwm2mcodec.FormatTLVOld:
		return lwm2mcodec.FormatTLV, true
	case lwm2mcodec.FormatLwM2MJSONOld:
		return lwm2mcodec.FormatLwM2MJSON, true
	}
	return 0, false
}

// encode encodes the values read at p in content format cf.
func encode(cf uint16, p lwm2mcodec.Path, vs []lwm2mcodec.Value) ([]byte, error) {
	switch cf {
	case lwm2mcodec.FormatText:
		return lwm2mcodec.EncodeText(vs[0])
	case lwm2mcodec.FormatOpaque:
		return vs[0].Bytes, nil
	case lwm2mcodec.FormatTLV:
		return lwm2mcodec.EncodeTLVFor(p, vs)
	case lwm2mcodec.FormatSenMLJSON:
		return lwm2mcodec.EncodeSenMLJSON(vs)
	case lwm2mcodec.FormatSenMLCBOR:
		return lwm2mcodec.EncodeSenMLCBOR(vs)
	case lwm2mcodec.FormatLwM2MJSON:
		return lwm2mcodec.EncodeLwM2MJSON(vs)
	}
	return nil, fmt.Errorf("lwm2msim: content format %d", cf)
}

// read answers a Read.
func (d *Device) read(w mux.ResponseWriter, r *mux.Message, p lwm2mcodec.Path) {
	d.mu.Lock()
	vs, code := d.lookupLocked(p)
	d.mu.Unlock()
	if code != codes.Content {
		respond(w, code)
		return
	}
	cf, ok := d.formatFor(accept(r), p, vs)
	if !ok {
		respond(w, codes.NotAcceptable)
		return
	}
	b, err := encode(cf, p, vs)
	if err != nil {
		d.log.Warn("lwm2msim: encode", "path", p, "err", err)
		respond(w, codes.InternalServerError)
		return
	}
	_ = w.SetResponse(codes.Content, message.MediaType(cf), bytes.NewReader(b))
}

// observe answers an Observe: the current value, with an Observe sequence
// number, and a notification on every change from now on. A new
// observation of a path replaces the previous one.
func (d *Device) observe(s *session, w mux.ResponseWriter, r *mux.Message, p lwm2mcodec.Path) {
	d.mu.Lock()
	defer d.unlock() // pcpObservedLocked may queue events
	vs, code := d.lookupLocked(p)
	if code != codes.Content {
		respond(w, code)
		return
	}
	cf, ok := d.formatFor(accept(r), p, vs)
	if !ok {
		respond(w, codes.NotAcceptable)
		return
	}
	b, err := encode(cf, p, vs)
	if err != nil {
		d.log.Warn("lwm2msim: encode", "path", p, "err", err)
		respond(w, codes.InternalServerError)
		return
	}
	tok := append([]byte(nil), r.Token()...)
	for k, o := range s.observers {
		if o.path == p {
			delete(s.observers, k)
		}
	}
	s.observers[hex.EncodeToString(tok)] = &observer{token: tok, path: p, cf: cf, last: b}
	_ = w.SetResponse(codes.Content, message.MediaType(cf), bytes.NewReader(b))
	w.Message().SetObserve(d.nextSeqLocked())
	d.log.Debug("lwm2msim: observed", "path", p)
	if p.Contains(pathUplink) || pathUplink.Contains(p) {
		d.pcpObservedLocked(s)
	}
}

// cancelObserve ends the observation with the request's token (or, failing
// that, of the path).
func (d *Device) cancelObserve(s *session, r *mux.Message, p lwm2mcodec.Path) {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := hex.EncodeToString(r.Token())
	if _, ok := s.observers[k]; ok {
		delete(s.observers, k)
		return
	}
	for k, o := range s.observers {
		if o.path == p {
			delete(s.observers, k)
		}
	}
}

// nextSeqLocked returns the next Observe sequence number (24 bits).
func (d *Device) nextSeqLocked() uint32 {
	d.obsSeq = (d.obsSeq + 1) & 0xFFFFFF
	return d.obsSeq
}

// changedLocked notifies the observers of the current session whose path
// covers one of the changed paths, once each, in the order of the paths.
// The notification carries the values as they are now.
func (d *Device) changedLocked(paths ...lwm2mcodec.Path) {
	s := d.sess
	if s == nil || s.dead {
		return
	}
	done := map[*observer]bool{}
	for _, changed := range paths {
		for _, o := range s.sortedObservers() {
			if done[o] || !(o.path.Contains(changed) || changed.Contains(o.path)) {
				continue
			}
			done[o] = true
			vs, code := d.lookupLocked(o.path)
			if code != codes.Content {
				continue
			}
			d.notifyLocked(s, o, vs, true)
		}
	}
}

// sortedObservers returns the observers in a stable order (by path, then
// token), so that notifications of one change go out in a fixed order.
func (s *session) sortedObservers() []*observer {
	out := make([]*observer, 0, len(s.observers))
	for _, o := range s.observers {
		out = append(out, o)
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && observerLess(out[j], out[j-1]); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func observerLess(a, b *observer) bool {
	if a.path != b.path {
		return a.path.String() < b.path.String()
	}
	return bytes.Compare(a.token, b.token) < 0
}

// notifyLocked queues a notification of vs to o; when onChange, only if the
// payload differs from the last one o got.
func (d *Device) notifyLocked(s *session, o *observer, vs []lwm2mcodec.Value, onChange bool) {
	b, err := encode(o.cf, o.path, vs)
	if err != nil {
		d.log.Warn("lwm2msim: encode notification", "path", o.path, "err", err)
		return
	}
	if onChange && bytes.Equal(b, o.last) {
		return
	}
	o.last = b
	s.queue = append(s.queue, outMsg{token: o.token, path: o.path, seq: d.nextSeqLocked(), cf: o.cf, payload: b})
	s.wake()
}

// lost reports whether the session's connection is closed. A connection
// closed under a registered session, not by close, makes the device
// register again (Device.lostLocked); while the first registration runs,
// its caller sees the error and retries.
func (s *session) lost() bool {
	select {
	case <-s.conn.Done():
	default:
		return false
	}
	d := s.d
	d.mu.Lock()
	if s.loc != "" {
		d.lostLocked(s)
	}
	d.unlock()
	return true
}

// run sends the session's notifications, in order, until the session
// closes.
func (s *session) run() {
	d := s.d
	for {
		select {
		case <-s.done:
			return
		case <-s.conn.Done():
			s.lost()
			return
		case <-s.kick:
		}
		for {
			d.mu.Lock()
			if len(s.queue) == 0 || s.dead || s.hold > 0 {
				d.mu.Unlock()
				break
			}
			m := s.queue[0]
			s.queue = s.queue[1:]
			d.mu.Unlock()
			s.send(m)
		}
	}
}

// send writes one notification. A CON one waits for its acknowledgement:
// go-coap retransmits it (notifyAttempt), and when no acknowledgement came
// meanwhile the device sends it again as a new message (a new Message ID,
// the same Observe value, so a server that has it drops the copy as stale
// and acknowledges it at once), after a pause that doubles, until
// Config.NotifyTimeout has passed since the first: an acknowledgement that
// a busy server sends once it journaled the notification may come after
// go-coap stopped listening for the copy it answers. A notification still
// unacknowledged then ends its observation (RFC 7641 4.5).
func (s *session) send(m outMsg) {
	d := s.d
	start := netClock.Now()
	pause := notifyAttempt
	for {
		err := s.sendCopy(m, min(notifyAttempt, d.cfg.NotifyTimeout))
		if err == nil || d.cfg.NotifyNON {
			return
		}
		left := d.cfg.NotifyTimeout - netClock.Since(start)
		d.mu.Lock()
		dead := s.dead
		d.mu.Unlock()
		if left <= pause || dead || !s.pause(pause) {
			d.log.Info("lwm2msim: notification not acknowledged, observation ended", "path", m.path, "err", err)
			d.mu.Lock()
			if !s.dead {
				d.stats.Unacknowledged++
				delete(s.observers, hex.EncodeToString(m.token))
			}
			d.mu.Unlock()
			return
		}
		d.log.Debug("lwm2msim: notification not acknowledged, sending it again", "path", m.path, "err", err)
		pause *= 2
	}
}

// pause waits d on the network's clock; false when the session ended
// meanwhile.
func (s *session) pause(d time.Duration) bool {
	t := netClock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return true
	case <-s.done:
	case <-s.conn.Done():
	}
	return false
}

// sendCopy writes the notification once and, when CON, waits at most wait
// for its acknowledgement.
func (s *session) sendCopy(m outMsg, wait time.Duration) error {
	d := s.d
	ctx, cancel := context.WithCancel(s.conn.Context())
	t := netClock.AfterFunc(wait, cancel)
	defer func() {
		t.Stop()
		cancel()
	}()
	msg := s.conn.AcquireMessage(ctx)
	defer s.conn.ReleaseMessage(msg)
	msg.SetCode(codes.Content)
	msg.SetToken(m.token)
	msg.SetObserve(m.seq)
	msg.SetContentFormat(message.MediaType(m.cf))
	msg.SetBody(bytes.NewReader(m.payload))
	if d.cfg.NotifyNON {
		msg.SetType(message.NonConfirmable)
	} else {
		msg.SetType(message.Confirmable)
	}
	d.mu.Lock()
	d.lastUplink = d.clk.Now()
	d.stats.Notifications++
	d.mu.Unlock()
	return s.conn.WriteMessage(msg)
}

// write answers a Write (PUT).
func (d *Device) write(s *session, w mux.ResponseWriter, r *mux.Message, p lwm2mcodec.Path) {
	switch {
	case p == pathPackageURI:
		v, code := decodeWrite(r, p, lwm2mcodec.FormatText, lwm2mcodec.KindString)
		if code != codes.Changed {
			respond(w, code)
			return
		}
		respond(w, d.writePackageURI(v.Str))
	case p == pathDownlink && d.cfg.ObjectsPCP:
		v, code := decodeWrite(r, p, lwm2mcodec.FormatOpaque, lwm2mcodec.KindOpaque)
		if code != codes.Changed {
			respond(w, code)
			return
		}
		respond(w, codes.Changed)
		d.pcpDownlink(s, v.Bytes)
	default:
		d.mu.Lock()
		_, code := d.lookupLocked(p)
		d.mu.Unlock()
		respondMissingOr(w, code, codes.MethodNotAllowed)
	}
}

// decodeWrite decodes the value a Write carries for the resource p, as
// kind. A payload without Content-Format is taken as def.
func decodeWrite(r *mux.Message, p lwm2mcodec.Path, def uint16, kind lwm2mcodec.Kind) (lwm2mcodec.Value, codes.Code) {
	cf := def
	if c, err := r.ContentFormat(); err == nil {
		cf = uint16(c)
	}
	body, err := r.ReadBody()
	if err != nil {
		return lwm2mcodec.Value{}, codes.BadRequest
	}
	vs, err := lwm2mcodec.Decode(cf, p, body)
	switch {
	case errors.Is(err, lwm2mcodec.ErrUnsupportedFormat):
		return lwm2mcodec.Value{}, codes.UnsupportedMediaType
	case err != nil:
		return lwm2mcodec.Value{}, codes.BadRequest
	}
	for i := len(vs) - 1; i >= 0; i-- {
		if vs[i].Path != p {
			continue
		}
		v, err := vs[i].As(kind)
		if err != nil {
			return lwm2mcodec.Value{}, codes.BadRequest
		}
		return v, codes.Changed
	}
	return lwm2mcodec.Value{}, codes.BadRequest
}

// execute answers an Execute (POST).
func (d *Device) execute(w mux.ResponseWriter, p lwm2mcodec.Path) {
	if p == pathUpdate {
		respond(w, d.executeUpdate())
		return
	}
	d.mu.Lock()
	_, code := d.lookupLocked(p)
	d.mu.Unlock()
	respondMissingOr(w, code, codes.MethodNotAllowed)
}
