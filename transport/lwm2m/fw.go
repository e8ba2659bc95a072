package lwm2m

import (
	"errors"
	"net/url"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/transport/download"
)

// Block sizes (SZX, RFC 7959 2.2: 2^(SZX+4) bytes). maxSZX is the largest
// served, 1024 bytes (the 1 KB body limit, spec 3.1 and 3.7); a client
// that asks for SZX 7 (BERT, RFC 8323, which exists only over TCP) gets
// blocks of that size. defaultSZX, 512 bytes, is the block size of a
// request without Block2, as a LiteOS agent asks (spec 3.7).
const (
	maxSZX     = 6
	defaultSZX = 5
)

// servePackage answers GET /fw/{package_id}/t={token} (or with the token in
// a Uri-Query t, or in a LiteOS agent's "{package_id}?t={token}" last
// segment: PackageRequest): one Block2 block, a slice of the package's
// image (Config.Images) or read from the stored file at its offset. The
// token check and the package reader are the HTTP path's
// (download.Server.Check, download.Images): a file that differs from its
// package record is refused (5.00). The block size is the client's (at
// most 1024 bytes: SZX 7 gets 1024-byte blocks); a request without Block2
// gets block 0 of 512 bytes with the More flag, so any client can go on
// block-wise.
func (s *Server) servePackage(rq *request, path string) {
	ctx := rq.ctx
	peer := rq.conv.addr()
	escaped, tok, _ := PackageRequest(path)
	id, err := unescape(escaped)
	if err != nil {
		s.answer(rq, codes.NotFound, "")
		return
	}
	if tok == "" {
		q, err := queries(rq.msg)
		if err != nil {
			s.answer(rq, codes.BadRequest, err.Error())
			return
		}
		tok = q["t"]
	}
	g, err := s.cfg.Tokens.Check(ctx, tok, id)
	switch {
	case errors.Is(err, download.ErrInvalidToken):
		s.log.Info("lwm2m: download refused", "peer", peer, "package", id, "reason", err.Error())
		s.answer(rq, codes.Unauthorized, "invalid or expired download token")
		return
	case err != nil:
		s.log.Info("lwm2m: download refused", "peer", peer, "package", id, "device", g.DeviceID, "reason", err.Error())
		s.answer(rq, codes.Forbidden, "the upgrade this download was for has ended or was stopped")
		return
	}
	s.mu.Lock()
	reg := s.byDev[g.DeviceID]
	s.mu.Unlock()
	if reg != nil {
		// A device registered over DTLS downloads over its DTLS session
		// only (its URI is coaps://), one registered over plain CoAP over
		// plain CoAP.
		if err := sameSecurity(reg, rq.conv); err != nil {
			s.log.Info("lwm2m: download refused", "peer", peer, "package", id, "device", g.DeviceID, "reason", err.Error())
			s.answer(rq, codes.Forbidden, "this download belongs to another session")
			return
		}
	}
	num, szx := uint32(0), uint32(defaultSZX)
	if v, err := rq.msg.Options.GetUint32(message.Block2); err == nil {
		num, szx = v>>4, min(v&7, maxSZX) // BERT's NUM counts 1024 bytes too
	}
	content, err := s.cfg.Images.Open(ctx, id)
	if err != nil {
		s.lookupFailed(rq, id, err)
		return
	}
	defer content.Close()
	pkg := content.Package
	size := content.Size()
	bs := int64(1) << (szx + 4)
	off := int64(num) * bs
	if off >= size && !(off == 0 && size == 0) {
		s.answer(rq, codes.BadOption, "no such block")
		return
	}
	n := min(bs, size-off)
	buf, err := content.Slice(off, n)
	if err != nil {
		s.log.Error("lwm2m: reading a package", "package", id, "error", err)
		s.answer(rq, codes.InternalServerError, "")
		return
	}
	more := uint32(0)
	if off+n < size {
		more = 1
	}
	sum := pkg.SHA256
	opts := []message.Option{
		uintOpt(message.Block2, num<<4|more<<3|szx),
		{ID: message.ETag, Value: sum[:8]},
	}
	if num == 0 {
		opts = append(opts, uintOpt(message.Size2, uint32(min(size, 1<<32-1))))
	}
	rq.answer(codes.Content, message.AppOctets, buf, opts...)
	s.progress(g, off, n, size)
}

func unescape(s string) (string, error) {
	id, err := url.PathUnescape(s)
	if err != nil || id == "" {
		return "", errors.New("bad package ID")
	}
	return id, nil
}

func (s *Server) lookupFailed(rq *request, id string, err error) {
	if errors.Is(err, persistence.ErrNotFound) || errors.Is(err, persistence.ErrInvalid) {
		s.answer(rq, codes.NotFound, "")
		return
	}
	s.log.Error("lwm2m: opening a package", "package", id, "error", err)
	s.answer(rq, codes.InternalServerError, "")
}

// servedRun is the part of a download not yet reported served: blocks
// served one after the other, bytes [from, end).
type servedRun struct{ from, end int64 }

// progress reports the blocks served to a download (their answer set) in
// runs of contiguous blocks, each once it holds a tenth of the package, at
// the package's last block, or when the client asks elsewhere than the
// run's end (a resume further on, a restart further back): every range
// reported was served, and a block asked again within the run is not
// counted twice. A report per block would journal one event per kilobyte.
func (s *Server) progress(g download.Grant, off, n, size int64) {
	end := off + n
	var reports []servedRun
	s.mu.Lock()
	r, seen := s.dl[g]
	switch {
	case seen && off >= r.from && end <= r.end:
		s.mu.Unlock()
		return // a block of the run again: nothing new served
	case seen && off == r.end:
		r.end = end
	default:
		if seen && r.end > r.from {
			reports = append(reports, r)
		}
		r = servedRun{off, end}
	}
	if end == size || (r.end-r.from)*10 >= size {
		reports = append(reports, r)
		r = servedRun{end, end}
	}
	if end == size {
		delete(s.dl, g)
	} else {
		s.dl[g] = r
	}
	s.mu.Unlock()
	for _, rep := range reports {
		s.cfg.Tokens.Served(g, rep.from, rep.end-rep.from, size)
	}
}
