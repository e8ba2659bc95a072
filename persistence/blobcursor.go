package persistence

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// BlobCursor is the Read and Seek of a Blob, over the Blob's own ReadAt and
// size: a store embeds it in its Blob and calls Init once. Its position is
// its own; ReadAt, which it calls, stays safe for concurrent use.
type BlobCursor struct {
	at   io.ReaderAt
	id   string
	size int64

	mu  sync.Mutex // guards off
	off int64      // Read and Seek offset
}

// Init sets the cursor of blob id, of size bytes, read through at.
func (c *BlobCursor) Init(at io.ReaderAt, id string, size int64) {
	c.at, c.id, c.size = at, id, size
}

// Read implements io.Reader.
func (c *BlobCursor) Read(p []byte) (int, error) {
	c.mu.Lock()
	off := c.off
	c.mu.Unlock()
	if off >= c.size {
		return 0, io.EOF
	}
	if rest := c.size - off; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := c.at.ReadAt(p, off)
	c.mu.Lock()
	c.off = off + int64(n)
	c.mu.Unlock()
	if errors.Is(err, io.EOF) && n > 0 {
		err = nil
	}
	return n, err
}

// Seek implements io.Seeker. A position past the end is allowed (reads
// there return io.EOF); a negative one or an unknown whence is ErrInvalid.
func (c *BlobCursor) Seek(offset int64, whence int) (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = c.off + offset
	case io.SeekEnd:
		abs = c.size + offset
	default:
		return 0, fmt.Errorf("%w: blob %q: whence %d", ErrInvalid, c.id, whence)
	}
	if abs < 0 {
		return 0, fmt.Errorf("%w: blob %q: negative position %d", ErrInvalid, c.id, abs)
	}
	c.off = abs
	return abs, nil
}
