package coapudp

import (
	"io"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
)

// maxSZX is the largest block size over UDP: SZX 6, 1024 bytes (SZX 7,
// BERT, is for reliable transports; a request for it gets 1024-byte
// blocks, whose NUM counts the same bytes).
const maxSZX = 6

// ServeBlock2 answers r with the block of content (size bytes, read with
// ReadAt) that r's Block2 option asks for (RFC 7959): a request without one
// gets block 0 of 2^(szx+4) bytes. Every block carries Block2 (NUM, M,
// SZX) and etag when not nil; block 0 carries Size2. A block past the end
// gets 4.02 Bad Option. Nothing is kept between blocks: a transfer costs
// nothing between its requests. It returns the offset and length of the
// block served (n 0 when it answered with an error).
func ServeBlock2(w *ResponseWriter, r *Request, cf message.MediaType, content io.ReaderAt, size int64, etag []byte, szx uint32) (off, n int64) {
	num := uint32(0)
	szx = min(szx, maxSZX)
	if v, err := r.Msg.Options.GetUint32(message.Block2); err == nil {
		num, szx = v>>4, min(v&7, maxSZX)
	}
	bs := int64(1) << (szx + 4)
	off = int64(num) * bs
	if off >= size && !(off == 0 && size == 0) {
		w.SetResponse(codes.BadOption, message.TextPlain, []byte("no such block"))
		return 0, 0
	}
	n = min(bs, size-off)
	buf := make([]byte, n)
	if got, err := content.ReadAt(buf, off); err != nil && !(err == io.EOF && int64(got) == n) {
		w.SetResponse(codes.InternalServerError, message.TextPlain, nil)
		return 0, 0
	}
	more := uint32(0)
	if off+n < size {
		more = 1
	}
	opts := make([]message.Option, 0, 3)
	opts = append(opts, UintOption(message.Block2, num<<4|more<<3|szx))
	if etag != nil {
		opts = append(opts, message.Option{ID: message.ETag, Value: etag})
	}
	if num == 0 {
		opts = append(opts, UintOption(message.Size2, uint32(min(size, 1<<32-1))))
	}
	w.SetResponse(codes.Content, cf, buf, opts...)
	return off, n
}
