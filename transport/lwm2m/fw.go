package lwm2m

import (
	"bytes"
	"errors"
	"io"
	"net/url"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"

	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/transport/download"
)

// maxSZX is the largest block size served: 2^(6+4) = 1024 bytes (BERT,
// SZX 7, exists only over TCP).
const maxSZX = 6

// servePackage answers GET /fw/{package_id}/t={token} (or with the token in
// a Uri-Query t, or in a LiteOS agent's "{package_id}?t={token}" last
// segment: PackageRequest): one Block2 block, read from the stored file at
// its offset. The token check and the package opener are the HTTP path's
// (download.Server.Check, download.OpenPackage): a file that differs from
// its package record is refused (5.00). The block size is the client's (at
// most 1024 bytes); a request without Block2 gets block 0 of 1024 bytes
// with the More flag, so any client can go on block-wise.
func (s *Server) servePackage(w mux.ResponseWriter, r *mux.Message, path string) {
	ctx := r.Context()
	peer := w.Conn().RemoteAddr().String()
	escaped, tok, _ := PackageRequest(path)
	id, err := unescape(escaped)
	if err != nil {
		s.answer(w, codes.NotFound, "")
		return
	}
	if tok == "" {
		q, err := queries(r)
		if err != nil {
			s.answer(w, codes.BadRequest, err.Error())
			return
		}
		tok = q["t"]
	}
	g, err := s.cfg.Tokens.Check(ctx, tok, id)
	switch {
	case errors.Is(err, download.ErrInvalidToken):
		s.log.Info("lwm2m: download refused", "peer", peer, "package", id, "reason", err.Error())
		s.answer(w, codes.Unauthorized, "invalid or expired download token")
		return
	case err != nil:
		s.log.Info("lwm2m: download refused", "peer", peer, "package", id, "device", g.DeviceID, "reason", err.Error())
		s.answer(w, codes.Forbidden, "the upgrade this download was for has ended or was stopped")
		return
	}
	s.mu.Lock()
	reg := s.byDev[g.DeviceID]
	s.mu.Unlock()
	if reg != nil {
		// A device registered over DTLS downloads over its DTLS session
		// only (its URI is coaps://), one registered over plain CoAP over
		// plain CoAP.
		if err := sameSecurity(reg, w.Conn()); err != nil {
			s.log.Info("lwm2m: download refused", "peer", peer, "package", id, "device", g.DeviceID, "reason", err.Error())
			s.answer(w, codes.Forbidden, "this download belongs to another session")
			return
		}
	}
	num, szx := uint32(0), uint32(maxSZX)
	if v, err := r.Options().GetUint32(message.Block2); err == nil {
		num, szx = v>>4, v&7
		if szx > maxSZX {
			s.answer(w, codes.BadOption, "block size too large")
			return
		}
	}
	blob, pkg, err := download.OpenPackage(ctx, s.cfg.Packages, id)
	if err != nil {
		s.lookupFailed(w, id, err)
		return
	}
	defer blob.Close()
	size := blob.Size()
	bs := int64(1) << (szx + 4)
	off := int64(num) * bs
	if off >= size && !(off == 0 && size == 0) {
		s.answer(w, codes.BadOption, "no such block")
		return
	}
	n := min(bs, size-off)
	buf := make([]byte, n)
	if _, err := blob.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		s.log.Error("lwm2m: reading a package", "package", id, "error", err)
		s.answer(w, codes.InternalServerError, "")
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
	if err := w.SetResponse(codes.Content, message.AppOctets, bytes.NewReader(buf), opts...); err != nil {
		s.log.Debug("lwm2m: answering a block", "error", err)
		return
	}
	s.progress(g, off, n, size)
}

func unescape(s string) (string, error) {
	id, err := url.PathUnescape(s)
	if err != nil || id == "" {
		return "", errors.New("bad package ID")
	}
	return id, nil
}

func (s *Server) lookupFailed(w mux.ResponseWriter, id string, err error) {
	if errors.Is(err, persistence.ErrNotFound) || errors.Is(err, persistence.ErrInvalid) {
		s.answer(w, codes.NotFound, "")
		return
	}
	s.log.Error("lwm2m: opening a package", "package", id, "error", err)
	s.answer(w, codes.InternalServerError, "")
}

// progress reports the bytes served to a download in steps of a tenth of
// the package (and its last block): a report per block would journal one
// event per kilobyte.
func (s *Server) progress(g download.Grant, off, n, size int64) {
	end := off + n
	s.mu.Lock()
	from, seen := s.dl[g]
	if !seen || off < from {
		from = off // the first block, or a restart further back
	}
	report := end == size || (end-from)*10 >= size
	if report {
		s.dl[g] = end
	} else if !seen || off < s.dl[g] {
		s.dl[g] = from
	}
	if end == size {
		delete(s.dl, g)
	}
	s.mu.Unlock()
	if report && end > from {
		s.cfg.Tokens.Served(g, from, end-from, size)
	}
}
