package lwm2m

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport/download"
	"github.com/otafleet/otafleet/transport/lwm2m/lwm2mcodec"
	"github.com/otafleet/otafleet/transport/pcp"
)

func parseLinks(s string) ([]lwm2mcodec.Link, error) { return lwm2mcodec.ParseLinkFormat(s) }

// uintOpt is a CoAP uint option value (minimal big-endian bytes).
func uintOpt(id message.OptionID, v uint32) message.Option {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	i := 0
	for i < 4 && b[i] == 0 {
		i++
	}
	return message.Option{ID: id, Value: b[i:]}
}

// singleResource reports whether path names one resource (/o/i/r).
func singleResource(path string) bool { return strings.Count(strings.Trim(path, "/"), "/") == 2 }

// do runs one downlink against the device and delivers what it answered.
func (s *Server) do(reg *registration, dl *messages.Downlink) {
	s.exchanges.Add(1)
	// A de-registration ends the request at once (reg.life ends).
	ctx, cancel := context.WithTimeout(reg.life, s.cfg.RequestTimeout)
	defer cancel()
	switch k := dl.GetKind().(type) {
	case *messages.Downlink_Lwm2MRead:
		s.read(ctx, reg, k.Lwm2MRead.GetPath(), k.Lwm2MRead.GetTag())
	case *messages.Downlink_Lwm2MObserve:
		s.observe(ctx, reg, k.Lwm2MObserve.GetPath())
	case *messages.Downlink_Lwm2MCancelObserve:
		s.cancelObserve(ctx, reg, k.Lwm2MCancelObserve.GetPath())
	case *messages.Downlink_Lwm2MWrite:
		w := k.Lwm2MWrite
		release := reg.holdFota(w.GetPath())
		res, err := s.roundTrip(ctx, reg, putReq(w.GetPath(), message.TextPlain, []byte(w.GetValue())))
		s.answered(reg, messages.Lwm2MOp_LWM2M_OP_WRITE, w.GetPath(), res, err, 0, w.GetPath() == messages.PathPackageURI && w.GetValue() == "")
		release()
	case *messages.Downlink_Lwm2MWritePackageUri:
		release := reg.holdFota(messages.PathPackageURI)
		s.writePackageURI(ctx, reg, k.Lwm2MWritePackageUri.GetJob())
		release()
	case *messages.Downlink_Lwm2MExecute:
		path := k.Lwm2MExecute.GetPath()
		release := reg.holdFota(path)
		res, err := s.roundTrip(ctx, reg, postReq(path))
		s.answered(reg, messages.Lwm2MOp_LWM2M_OP_EXECUTE, path, res, err, 0, false)
		release()
	default:
		frame, err := s.pcpFrame(ctx, dl)
		if err != nil {
			s.log.Error("lwm2m: downlink not sent", "device", reg.device, "kind", fmt.Sprintf("%T", dl.GetKind()), "error", err)
			return
		}
		res, err := s.roundTrip(ctx, reg, putReq(messages.PathPCPDownlink, message.AppOctets, frame))
		code := messages.PcpCode(frame[3]) // FFFE, version, message code (spec 4.2)
		// Failed writes are delivered, and so is the success of a 0x16
		// acknowledgement: the device's 0x17 waits for it, to leave straight
		// after its journal entry instead of queueing behind this write.
		if err != nil || !success(res.Code) || code == messages.PcpCodeReportDownloadResult {
			s.answered(reg, messages.Lwm2MOp_LWM2M_OP_WRITE, messages.PathPCPDownlink, res, err, uint32(code), false)
		} else {
			s.awake(reg)
		}
	}
}

func success(c codes.Code) bool { return c>>5 == 2 }

// codeText is a CoAP code as "4.04".
func codeText(c codes.Code) string { return fmt.Sprintf("%d.%02d", c>>5, c&0x1f) }

// answered delivers the outcome of a write or execute, or of a failed read:
// nothing when the device did not answer (the step's deadline covers it). An
// answer is marked no_ack: the device expects no acknowledgement of it and
// never sends it again (see deliver).
// pcpCode names the PCP frame a write of /19/1/0 carried (0 otherwise);
// fotaReset marks the answer of an empty write of /5/0/1, the reset of the
// firmware update state machine, apart from a package URI's.
func (s *Server) answered(reg *registration, op messages.Lwm2MOp, path string, res *message.Message, err error, pcpCode uint32, fotaReset bool) {
	if err != nil {
		s.log.Debug("lwm2m: no answer", "device", reg.device, "op", op.String(), "path", path, "error", err)
		return
	}
	s.awake(reg)
	s.deliver(reg.device, &messages.DeviceInput{NoAck: true, Kind: &messages.DeviceInput_Lwm2MResponse{Lwm2MResponse: &messages.Lwm2MResponse{
		Op: op, Path: path, Success: success(res.Code), Code: codeText(res.Code), PcpCode: pcpCode, FotaReset: fotaReset,
	}}})
}

// read reads path; a single resource is asked as text/plain first and
// again without Accept if the device will not give it (project decision 7).
// The answer carries the read's tag (DeviceInput.request_tag).
func (s *Server) read(ctx context.Context, reg *registration, path string, tag uint64) {
	var opts []message.Option
	if singleResource(path) {
		opts = append(opts, uintOpt(message.Accept, uint32(message.TextPlain)))
	}
	res, err := s.roundTrip(ctx, reg, getReq(path, opts...))
	if err == nil && res.Code == codes.NotAcceptable && len(opts) > 0 {
		res, err = s.roundTrip(ctx, reg, getReq(path))
	}
	if err != nil {
		s.log.Debug("lwm2m: read unanswered", "device", reg.device, "path", path, "error", err)
		return
	}
	s.value(reg, messages.Lwm2MOp_LWM2M_OP_READ, path, res, true, tag)
}

// observe starts observing path: the first answer and every notification
// are delivered like reads. The first answer, and a non-confirmable
// notification, are marked no_ack; a confirmable notification is not: the
// device expects it acknowledged, which it is once the engine journaled it
// durably (notified).
func (s *Server) observe(ctx context.Context, reg *registration, path string) {
	reg.mu.Lock()
	old := reg.obs[path]
	reg.mu.Unlock()
	if old != nil && !old.canceled() {
		_ = old.cancel(ctx) // a new observation (the device may have rebooted)
	}
	st := &observed{}
	obs, first, err := s.observeTrip(ctx, reg, getReq(path), func(n *message.Message, ack func(bool)) {
		s.notified(reg, path, st, n, ack)
	})
	if first != nil {
		s.notified(reg, path, st, first, func(bool) {})
		// Delivered before the next downlink goes out and its answer is
		// delivered, as the answers of other requests are.
		reg.runWait(nil)
	}
	if err != nil {
		s.log.Debug("lwm2m: observe unanswered", "device", reg.device, "path", path, "error", err)
		return
	}
	if obs == nil {
		return // the device did not take the observation (its answer is delivered)
	}
	reg.mu.Lock()
	if reg.gone {
		reg.mu.Unlock()
		_ = obs.cancel(ctx)
		return
	}
	reg.obs[path] = obs
	reg.mu.Unlock()
}

// observed is an observation's state: whether its first answer came, and
// the Observe value of the last notification delivered.
type observed struct {
	mu      sync.Mutex
	gotOne  bool
	seq     uint32
	seqAt   time.Time
	haveSeq bool
}

// fresh tells whether n is newer than the last notification delivered
// (RFC 7641 3.4) and, if so, makes it the last one. st.mu is held.
func (st *observed) fresh(n *message.Message, now time.Time) bool {
	v, err := n.Options.Observe()
	if err != nil {
		return true
	}
	if st.haveSeq && !fresher(st.seq, v, now.Sub(st.seqAt)) {
		return false
	}
	st.seq, st.seqAt, st.haveSeq = v, now, true
	return true
}

// notified delivers the first answer or a notification n of the
// observation of path (st), in the order they arrive; one older than the
// last delivered is dropped, so the device machine sees object 5 and 19 in
// the device's order. It decodes n now (n may be reused after the call)
// and delivers it on the registration's delivery goroutine (reg.run),
// acknowledging a confirmable one (ack) after the delivery, that is once
// the engine journaled it: the caller, a reader of the socket, does not
// wait for the journal.
func (s *Server) notified(reg *registration, path string, st *observed, n *message.Message, ack func(ok bool)) {
	st.mu.Lock()
	defer st.mu.Unlock()
	gotOne, seq, seqAt, haveSeq := st.gotOne, st.seq, st.seqAt, st.haveSeq
	if !st.fresh(n, s.cfg.Clock.Now()) {
		s.log.Debug("lwm2m: stale notification dropped", "device", reg.device, "path", path)
		ack(true)
		return
	}
	op := messages.Lwm2MOp_LWM2M_OP_OBSERVE
	if st.gotOne {
		op = messages.Lwm2MOp_LWM2M_OP_READ // a notification: a value like a read's
		s.exchanges.Add(1)                  // (the first answer is its request's)
	}
	noAck := !st.gotOne || n.Type != message.Confirmable
	st.gotOne = true
	deliver := s.prepareValue(reg, op, path, n, noAck, 0)
	if strings.HasPrefix(path, "/5/") && reg.holdOrRun(func() { _ = deliver() }) {
		ack(true)
		return
	}
	taken := st.seq
	// Not delivered: the copy the device sends again (with the same Observe
	// value) must not be dropped as stale, nor acknowledged.
	undo := func() {
		if st.seq == taken {
			st.gotOne, st.seq, st.seqAt, st.haveSeq = gotOne, seq, seqAt, haveSeq
		}
		ack(false)
	}
	ok := reg.run(func() {
		if err := deliver(); err != nil {
			st.mu.Lock()
			undo()
			st.mu.Unlock()
			return
		}
		ack(true)
	})
	if !ok {
		undo()
		s.log.Warn("lwm2m: notification dropped unacknowledged: too many waiting for the engine", "device", reg.device, "path", path)
	}
}

func (s *Server) cancelObserve(ctx context.Context, reg *registration, path string) {
	reg.mu.Lock()
	obs := reg.obs[path]
	delete(reg.obs, path)
	reg.mu.Unlock()
	if obs != nil && !obs.canceled() {
		if err := obs.cancel(ctx); err != nil {
			s.log.Debug("lwm2m: cancelling an observation", "device", reg.device, "path", path, "error", err)
		}
	}
}

// holdFota starts holding object 5 notifications while a request on
// object 5 (path) waits for its answer; the returned func delivers what was
// held, in order after the deliveries queued before them, and stops
// holding.
func (reg *registration) holdFota(path string) func() {
	if !strings.HasPrefix(path, "/5/") {
		return func() {}
	}
	reg.mu.Lock()
	reg.hold = true
	reg.mu.Unlock()
	return func() {
		for {
			reg.mu.Lock()
			held := reg.held
			reg.held = nil
			if len(held) == 0 {
				reg.hold = false
				reg.mu.Unlock()
				return
			}
			reg.mu.Unlock()
			reg.runWait(held)
		}
	}
}

// holdOrRun queues f while notifications are held; false when they are not
// (the caller runs f).
func (reg *registration) holdOrRun(f func()) bool {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	if !reg.hold {
		return false
	}
	reg.held = append(reg.held, f)
	return true
}

// value delivers a read's answer as the inputs the device machine expects,
// marked no_ack (an answer to the server's request, not one the device
// expects acknowledged) and carrying the read's tag (request_tag).
func (s *Server) value(reg *registration, op messages.Lwm2MOp, path string, res *message.Message, noAck bool, tag uint64) {
	_ = s.prepareValue(reg, op, path, res, noAck, tag)() // logged; the stage's deadline covers a lost answer
}

// prepareValue decodes an answer now (a notification's message is reused
// after the call) and returns the delivery of its inputs (marked as value
// marks them), which fails when the engine did not take them. tag is the
// tag of the read answered (DeviceInput.request_tag); 0 for a notification.
func (s *Server) prepareValue(reg *registration, op messages.Lwm2MOp, path string, res *message.Message, noAck bool, tag uint64) func() error {
	s.awake(reg)
	fail := func(code string) func() error {
		in := &messages.DeviceInput{NoAck: noAck, RequestTag: tag, Kind: &messages.DeviceInput_Lwm2MResponse{Lwm2MResponse: &messages.Lwm2MResponse{
			Op: op, Path: path, Success: false, Code: code,
		}}}
		return func() error { return s.deliver(reg.device, in) }
	}
	if !success(res.Code) {
		return fail(codeText(res.Code))
	}
	body := res.Payload
	if path == messages.PathPCPUplink {
		body = bytes.Clone(body)
		return func() error { return s.pcpUplink(reg, body, noAck) }
	}
	cf := message.TextPlain
	if f, err := res.Options.ContentFormat(); err == nil {
		cf = f
	}
	p, err := lwm2mcodec.ParsePath(path)
	if err != nil {
		s.log.Warn("lwm2m: answer for a malformed path", "device", reg.device, "path", path, "error", err)
		return func() error { return nil }
	}
	vs, err := lwm2mcodec.Decode(uint16(cf), p, body)
	if err != nil {
		s.log.Warn("lwm2m: undecodable answer", "device", reg.device, "path", path, "content_format", cf, "error", err)
		return fail(codeText(res.Code) + " undecodable")
	}
	in := inputFor(path, vs)
	if in == nil {
		in = &messages.DeviceInput{Kind: &messages.DeviceInput_Lwm2MResponse{Lwm2MResponse: &messages.Lwm2MResponse{
			Op: op, Path: path, Success: true, Code: codeText(res.Code),
		}}}
	}
	in.NoAck, in.RequestTag = noAck, tag
	return func() error { return s.deliver(reg.device, in) }
}

// inputFor maps the values of a path the device machine reads to its input;
// nil for other paths or values it lacks.
func inputFor(path string, vs []lwm2mcodec.Value) *messages.DeviceInput {
	at := func(p string) lwm2mcodec.Path { pp, _ := lwm2mcodec.ParsePath(p); return pp }
	i32 := func(p string) *int32 {
		v, ok := lwm2mcodec.IntAt(vs, at(p))
		if !ok || v < -1<<31 || v > 1<<31-1 {
			return nil
		}
		n := int32(v)
		return &n
	}
	cell := func() string {
		if v, ok := lwm2mcodec.IntAt(vs, at(messages.PathCellID)); ok {
			return strconv.FormatInt(v, 10)
		}
		s, _ := lwm2mcodec.StringAt(vs, at(messages.PathCellID))
		return s
	}
	switch path {
	case messages.PathFirmwareVersion:
		if v, ok := lwm2mcodec.StringAt(vs, at(path)); ok {
			return &messages.DeviceInput{Kind: &messages.DeviceInput_VersionReported{VersionReported: &messages.VersionReported{FwVersion: &v}}}
		}
	case messages.PathConnMon:
		return &messages.DeviceInput{Kind: &messages.DeviceInput_RadioReported{RadioReported: &messages.RadioReported{
			Rsrp: i32(messages.PathRSRP), Sinr: i32(messages.PathSINR), CellId: cell(),
		}}}
	case messages.PathCellID:
		return &messages.DeviceInput{Kind: &messages.DeviceInput_RadioReported{RadioReported: &messages.RadioReported{CellId: cell()}}}
	case messages.PathFotaState, messages.PathUpdateResult, messages.PathFotaObject:
		f := &messages.FotaStatus{State: i32(messages.PathFotaState), UpdateResult: i32(messages.PathUpdateResult)}
		if f.State == nil && f.UpdateResult == nil {
			return nil
		}
		return &messages.DeviceInput{Kind: &messages.DeviceInput_FotaStatus{FotaStatus: f}}
	}
	return nil
}

// writePackageURI writes /5/0/1 with the URI of the job's package on this
// endpoint, with the download handle of the attempt (download.Server.Handle):
// coaps:// on the DTLS listener for a device registered over DTLS (so its
// download stays on DTLS), coap:// otherwise. Every write of one attempt
// writes the same URI, before and after a restart.
func (s *Server) writePackageURI(ctx context.Context, reg *registration, job *messages.Job) {
	pkg := job.GetPackage().GetPackageId()
	handle, err := s.cfg.Tokens.Handle(ctx, download.Grant{TaskID: job.GetTaskId(), DeviceID: reg.device, Attempt: job.GetAttempt(), PackageID: pkg})
	if err != nil {
		// Not written: the device machine's deadline covers it, as for a
		// device that does not answer.
		s.log.Error("lwm2m: Package URI not written", "device", reg.device, "error", err)
		return
	}
	addr := s.cfg.PublicAddr
	if reg.secure {
		addr = s.cfg.DTLSPublicAddr
	}
	uri := PackageURI(reg.secure, addr, pkg, handle)
	res, err := s.roundTrip(ctx, reg, putReq(messages.PathPackageURI, message.TextPlain, []byte(uri)))
	// The URI and its handle, for the device's timeline; before the write's
	// answer, which may end the job.
	s.deliver(reg.device, &messages.DeviceInput{Kind: &messages.DeviceInput_DownloadOffered{DownloadOffered: &messages.DownloadOffered{
		TaskId: job.GetTaskId(), Attempt: job.GetAttempt(), Uri: uri, Token: handle,
	}}})
	s.answered(reg, messages.Lwm2MOp_LWM2M_OP_WRITE, messages.PathPackageURI, res, err, 0, false)
}

// packageRoot is the first path segment of every Package URI.
const packageRoot = "fw"

// TokenKey names the token in a Package URI: the last path segment is
// TokenKey and the token ("/fw/{package_id}/t={token}"), as a query would
// name it ("?t={token}", accepted too). It is what a log or a timeline
// masks to hide a URI's token.
const TokenKey = "t="

// PackageURI is the URI a device downloads a package from: coaps:// (DTLS)
// when secure, coap:// otherwise, at addr (host:port), with the token in
// the path, "/fw/{package_id}/t={token}": a LiteOS agent keeps only a
// URI's path, and Debian's coap-client a path of at most 100 bytes. With a
// handle (download.Server.Handle) and a package ID of the server's (24
// characters), it has 61 characters and the address, whatever the device
// ID: /5/0/1 holds 255.
func PackageURI(secure bool, addr, packageID, token string) string {
	scheme := "coap://"
	if secure {
		scheme = "coaps://"
	}
	return scheme + addr + "/" + packageRoot + "/" + url.PathEscape(packageID) + "/" + TokenKey + url.PathEscape(token)
}

// PackageRequest splits the Uri-Path of a package download (its segments
// joined by '/', without a leading '/') into the package ID, as it is in
// the path, and the token in the path: "fw/{package_id}/t={token}", what
// PackageURI writes, or "fw/{package_id}?t={token}" as one last segment,
// which is where a LiteOS agent puts the query of a URI. The token is ""
// when the path has none (it is then in a Uri-Query option t). ok is
// false when the path is not a package's.
func PackageRequest(path string) (packageID, token string, ok bool) {
	rest, found := strings.CutPrefix(path, packageRoot+"/")
	if !found {
		return "", "", false
	}
	packageID, last, inPath := strings.Cut(rest, "/")
	if inPath {
		token, found = strings.CutPrefix(last, TokenKey)
		return packageID, token, found && packageID != ""
	}
	packageID, query, _ := strings.Cut(rest, "?")
	for _, kv := range strings.Split(query, "&") {
		if v, found := strings.CutPrefix(kv, TokenKey); found {
			token = v
		}
	}
	return packageID, token, packageID != ""
}

// pcpFrame encodes a PCP downlink; a segment response carries the
// segment's bytes read from the package file.
func (s *Server) pcpFrame(ctx context.Context, dl *messages.Downlink) ([]byte, error) {
	u16 := func(field string, v uint32) (uint16, error) {
		if v > 0xFFFF {
			return 0, fmt.Errorf("%s %d does not fit PCP's 16 bits", field, v)
		}
		return uint16(v), nil
	}
	u8 := func(field string, v uint32) (byte, error) {
		if v > 0xFF {
			return 0, fmt.Errorf("%s %d does not fit PCP's 8 bits", field, v)
		}
		return byte(v), nil
	}
	switch k := dl.GetKind().(type) {
	case *messages.Downlink_PcpQueryVersion:
		return pcp.EncodeQueryVersion(), nil
	case *messages.Downlink_PcpNotifyNewVersion:
		n := k.PcpNotifyNewVersion
		size, err := u16("segment_size", n.GetSegmentSize())
		if err != nil {
			return nil, err
		}
		count, err := u16("segment_count", n.GetSegmentCount())
		if err != nil {
			return nil, err
		}
		check, err := u16("check_code", n.GetCheckCode())
		if err != nil {
			return nil, err
		}
		return pcp.EncodeNotify(pcp.NotifyNewVersion{Version: n.GetVersion(), SegmentSize: size, SegmentCount: count, CheckCode: check})
	case *messages.Downlink_PcpSegmentResponse:
		r := k.PcpSegmentResponse
		result, err := u8("result", r.GetResult())
		if err != nil {
			return nil, err
		}
		no, err := u16("segment_no", r.GetSegmentNo())
		if err != nil {
			return nil, err
		}
		m := pcp.SegmentResponse{Result: result, SegmentNo: no}
		if result == messages.PcpResultOK {
			if m.Data, err = s.segment(ctx, r); err != nil {
				return nil, err
			}
		}
		return pcp.EncodeSegmentResponse(m)
	case *messages.Downlink_PcpDownloadResultAck:
		result, err := u8("result", k.PcpDownloadResultAck.GetResult())
		if err != nil {
			return nil, err
		}
		return pcp.EncodeDownloadResultAck(pcp.DownloadResultAck{Result: result}), nil
	case *messages.Downlink_PcpExecute:
		return pcp.EncodeExecute(), nil
	case *messages.Downlink_PcpUpgradeResultAck:
		result, err := u8("result", k.PcpUpgradeResultAck.GetResult())
		if err != nil {
			return nil, err
		}
		return pcp.EncodeUpgradeResultAck(pcp.UpgradeResultAck{Result: result}), nil
	}
	return nil, fmt.Errorf("not an LwM2M downlink: %T", dl.GetKind())
}

// segment reads segment r.SegmentNo of the package file, verified against
// its record, from its image (Config.Images): a slice of the image, not to
// be modified.
func (s *Server) segment(ctx context.Context, r *messages.PcpSegmentResponse) ([]byte, error) {
	size := r.GetSegmentSize()
	if size == 0 || size > 0xFFFF {
		return nil, fmt.Errorf("segment size %d", size)
	}
	content, err := s.cfg.Images.Open(ctx, r.GetPackageId())
	if err != nil {
		return nil, err
	}
	defer content.Close()
	off, n, ok := pcp.SegmentRange(content.Size(), uint16(size), uint16(r.GetSegmentNo()))
	if !ok {
		return nil, fmt.Errorf("segment %d of a %d-byte package in %d-byte segments does not exist", r.GetSegmentNo(), content.Size(), size)
	}
	return content.Slice(off, int64(n))
}

// pcpUplink delivers a PCP frame the device notified on /19/0/0. Other
// data on that resource is the device's business data (spec 4.7): it shows
// the device awake, nothing more. noAck marks a frame nothing is
// acknowledged on (an observation's first value, a non-confirmable
// notification); the device's answers to the server's 0x13, 0x14 and 0x17
// are marked so in any case: the server asks again (Resume, the stage's
// deadline) rather than rely on them, and the device never sends one again
// on its own. Its own requests (0x15, 0x16, 0x18) in a confirmable
// notification are not: it expects them acknowledged.
func (s *Server) pcpUplink(reg *registration, b []byte, noAck bool) error {
	if len(b) == 0 {
		return nil
	}
	if !pcp.IsPCP(b) {
		s.log.Debug("lwm2m: business data on /19/0/0", "device", reg.device, "bytes", len(b))
		return s.deliver(reg.device, &messages.DeviceInput{Kind: &messages.DeviceInput_Uplink{Uplink: &messages.Uplink{}}})
	}
	m, err := pcp.DecodeUplink(b)
	if err != nil {
		s.log.Warn("lwm2m: malformed PCP frame ignored", "device", reg.device, "error", err)
		return nil
	}
	var in *messages.DeviceInput
	switch v := m.(type) {
	case pcp.VersionResponse:
		in = &messages.DeviceInput{NoAck: true, Kind: &messages.DeviceInput_PcpVersion{PcpVersion: &messages.PcpVersion{Result: uint32(v.Result), Version: v.Version}}}
	case pcp.NotifyResponse:
		in = &messages.DeviceInput{NoAck: true, Kind: &messages.DeviceInput_PcpNotifyResponse{PcpNotifyResponse: &messages.PcpNotifyResponse{Result: uint32(v.Result)}}}
	case pcp.SegmentRequest:
		in = &messages.DeviceInput{Kind: &messages.DeviceInput_PcpSegmentRequest{PcpSegmentRequest: &messages.PcpSegmentRequest{Version: v.Version, SegmentNo: uint32(v.SegmentNo)}}}
	case pcp.DownloadResult:
		in = &messages.DeviceInput{Kind: &messages.DeviceInput_PcpDownloadResult{PcpDownloadResult: &messages.PcpDownloadResult{Status: uint32(v.Status)}}}
	case pcp.ExecuteResponse:
		in = &messages.DeviceInput{NoAck: true, Kind: &messages.DeviceInput_PcpExecuteResponse{PcpExecuteResponse: &messages.PcpExecuteResponse{Result: uint32(v.Result)}}}
	case pcp.UpgradeResult:
		in = &messages.DeviceInput{Kind: &messages.DeviceInput_PcpUpgradeResult{PcpUpgradeResult: &messages.PcpUpgradeResult{Result: uint32(v.Result), Version: v.Version}}}
	default:
		s.log.Warn("lwm2m: unexpected PCP message from a device", "device", reg.device, "code", m.Code().String())
		return nil
	}
	in.NoAck = in.NoAck || noAck
	return s.deliver(reg.device, in)
}

// fresher reports whether a notification with Observe value v2, arriving
// elapsed after the one with v1, is newer (RFC 7641 section 3.4).
func fresher(v1, v2 uint32, elapsed time.Duration) bool {
	const half = 1 << 23
	return (v1 < v2 && v2-v1 < half) || (v1 > v2 && v1-v2 > half) || elapsed > 128*time.Second
}
