package download

import (
	"bytes"
	"container/list"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/otafleet/otafleet/persistence"
)

// DefaultImageBytes is the bound of the package images an Images keeps in
// memory when none is given (serve's --package-cache-bytes): 256 MiB.
const DefaultImageBytes = 256 << 20

// Images serves package files from immutable in-memory images: a package's
// file is read from the store once, checked against its record (size and
// the SHA-256 of the bytes read), and then every download of it, by any
// device and over any path (HTTP ranges, CoAP Block2 blocks, PCP segments),
// reads slices of that one image without opening the store or copying.
//
// The images held are bounded in bytes. An image no download is reading
// (no Content open on it) may be evicted, least recently used first, to
// make room for another; a package larger than the bound, or one that does
// not fit beside the images being read, is streamed from the store as
// OpenPackage opens it, per request. An image never changes: a package's ID
// names one file for good (package IDs are generated, blobs are
// immutable), so an image is never stale; the store is read again only
// after an eviction.
//
// An Images is safe for concurrent use: readers of one package share its
// image, and the first of them loads it while the others wait.
type Images struct {
	packages Packages
	max      int64

	mu    sync.Mutex
	byID  map[string]*image
	idle  list.List // of *image: loaded, no reader, most recently used first
	bytes int64     // the sizes of the images in byID, loaded or loading
}

// image is one package's file in memory.
type image struct {
	id    string
	size  int64
	ready chan struct{} // closed once pkg, data and err are set
	pkg   persistence.Package
	data  []byte
	err   error
	// readers is the number of open Contents and waiters on the image;
	// idle is its place in Images.idle when readers is 0.
	readers int
	idle    *list.Element
}

// NewImages returns an Images of packages' files holding at most maxBytes
// of them in memory; maxBytes ≤ 0 keeps none (every Open streams from the
// store).
func NewImages(packages Packages, maxBytes int64) *Images {
	return &Images{packages: packages, max: max(maxBytes, 0), byID: map[string]*image{}}
}

// Bytes returns the bytes of the images held (loaded or loading) and their
// number.
func (c *Images) Bytes() (bytes int64, images int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes, len(c.byID)
}

// Content is an open package: its record and its file's bytes, from an
// image or streamed from the store. Close it when done. A Content is for
// one request: its methods are not safe for concurrent use (ReadSeeker's
// offset is shared), except Slice over an image.
type Content struct {
	// Package is the package's record, whose Size and SHA256 its bytes
	// have.
	Package persistence.Package
	images  *Images
	im      *image           // the image read, or
	blob    persistence.Blob // the file streamed
	rs      io.ReadSeeker
}

// Open returns package id's record and bytes, verified as OpenPackage
// verifies them: errors wrap persistence.ErrNotFound or
// persistence.ErrInvalid for a package (or file) that does not exist,
// ErrPackageMismatch for a file that differs from its record (in size, or
// in the SHA-256 of its bytes when it is loaded as an image), and otherwise
// the store's error. A failed load is not kept: the next Open tries again.
func (c *Images) Open(ctx context.Context, id string) (*Content, error) {
	if c.max > 0 {
		c.mu.Lock()
		im := c.byID[id]
		if im != nil {
			c.pin(im)
		}
		c.mu.Unlock()
		if im != nil {
			return c.await(ctx, im)
		}
		pkg, err := c.packages.GetPackage(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("download: package %q: %w", id, err)
		}
		if im, load := c.reserve(id, pkg.Size); im != nil {
			if load {
				c.load(ctx, im)
			}
			return c.await(ctx, im)
		}
	}
	blob, pkg, err := OpenPackage(ctx, c.packages, id)
	if err != nil {
		return nil, err
	}
	return &Content{Package: pkg, images: c, blob: blob, rs: blob}, nil
}

// pin counts one more reader of im, which leaves the idle list. c.mu is
// held.
func (c *Images) pin(im *image) {
	im.readers++
	if im.idle != nil {
		c.idle.Remove(im.idle)
		im.idle = nil
	}
}

// unpin counts one reader of im less; an image no one reads becomes the
// most recently used idle one. An image that failed to load is already
// gone from byID and stays out of the list.
func (c *Images) unpin(im *image) {
	c.mu.Lock()
	defer c.mu.Unlock()
	im.readers--
	if im.readers == 0 && c.byID[im.id] == im {
		im.idle = c.idle.PushFront(im)
	}
}

// reserve makes room for an image of package id of size bytes, evicting
// idle images least recently used first, and returns it pinned; load is
// true when the caller must load it (false: another request did in the
// meantime). It returns nil when the image does not fit: larger than the
// bound, or beside the images being read.
func (c *Images) reserve(id string, size int64) (im *image, load bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if im := c.byID[id]; im != nil {
		c.pin(im)
		return im, false
	}
	if size < 0 || size > c.max {
		return nil, false
	}
	for c.bytes+size > c.max {
		e := c.idle.Back()
		if e == nil {
			return nil, false // every image held is being read
		}
		old := c.idle.Remove(e).(*image)
		old.idle = nil
		delete(c.byID, old.id)
		c.bytes -= old.size
	}
	im = &image{id: id, size: size, ready: make(chan struct{}), readers: 1}
	c.byID[id] = im
	c.bytes += size
	return im, true
}

// load reads im's file and checks it. The read does not end with ctx, as
// other requests may be waiting for the image; it ends with the store.
func (c *Images) load(ctx context.Context, im *image) {
	im.pkg, im.data, im.err = readImage(context.WithoutCancel(ctx), c.packages, im.id, im.size)
	if im.err != nil {
		c.mu.Lock()
		delete(c.byID, im.id)
		c.bytes -= im.size
		c.mu.Unlock()
	}
	close(im.ready)
}

// readImage reads package id's file whole, once OpenPackage found it the
// record's size (size bytes, as the record said when the image was
// reserved), and checks the SHA-256 of the bytes read against the record.
func readImage(ctx context.Context, packages Packages, id string, size int64) (persistence.Package, []byte, error) {
	blob, pkg, err := OpenPackage(ctx, packages, id)
	if err != nil {
		return pkg, nil, err
	}
	defer blob.Close()
	if pkg.Size != size {
		// The record changed between GetPackage and OpenPackage: a package
		// is not replaced under the same ID, so this is a broken store.
		return pkg, nil, fmt.Errorf("%w: package %q had %d bytes, now %d", ErrPackageMismatch, id, size, pkg.Size)
	}
	data := make([]byte, size)
	if n, err := blob.ReadAt(data, 0); int64(n) != size {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return pkg, nil, fmt.Errorf("download: reading the file of package %q: %w", id, err)
	}
	if sum := sha256.Sum256(data); sum != pkg.SHA256 {
		return pkg, nil, fmt.Errorf("%w: package %q has SHA-256 %x; its file's bytes %x", ErrPackageMismatch, id, pkg.SHA256, sum)
	}
	return pkg, data, nil
}

// await waits for pinned image im to be loaded and returns a Content on
// it, or unpins it and returns the load's error or ctx's.
func (c *Images) await(ctx context.Context, im *image) (*Content, error) {
	select {
	case <-im.ready:
	case <-ctx.Done():
		c.unpin(im)
		return nil, ctx.Err()
	}
	if im.err != nil {
		c.unpin(im)
		return nil, im.err
	}
	return &Content{Package: im.pkg, images: c, im: im}, nil
}

// errClosed: a Content read after Close.
var errClosed = errors.New("read after Close")

// Size is the package's size in bytes.
func (p *Content) Size() int64 { return p.Package.Size }

// Slice returns bytes [off, off+n) of the package. From an image it is a
// slice of the image, shared and not copied: the caller must not modify it,
// and may keep it after Close. Streamed, it is read into a new buffer. It
// fails for a range outside the package.
func (p *Content) Slice(off, n int64) ([]byte, error) {
	if off < 0 || n < 0 || off > p.Size() || n > p.Size()-off {
		return nil, fmt.Errorf("download: bytes [%d, %d) of a %d-byte package", off, off+n, p.Size())
	}
	switch {
	case p.im != nil:
		return p.im.data[off : off+n : off+n], nil
	case p.blob == nil:
		return nil, fmt.Errorf("download: package %q: %w", p.Package.ID, errClosed)
	}
	buf := make([]byte, n)
	if m, err := p.blob.ReadAt(buf, off); int64(m) != n {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("download: reading package %q: %w", p.Package.ID, err)
	}
	return buf, nil
}

// ReadSeeker returns the package's bytes as one io.ReadSeeker, positioned at
// 0 on the first call, for http.ServeContent; each call returns the same.
// It is not for use after Close.
func (p *Content) ReadSeeker() io.ReadSeeker {
	if p.rs == nil {
		p.rs = bytes.NewReader(p.im.data)
	}
	return p.rs
}

// Close releases the Content: the store's blob, or the image, which no
// longer counts this reader (and may be evicted when no one reads it).
// Slices of an image stay valid. Close twice does nothing more.
func (p *Content) Close() error {
	switch {
	case p.im != nil:
		im := p.im
		p.im = nil
		p.images.unpin(im)
	case p.blob != nil:
		b := p.blob
		p.blob = nil
		return b.Close()
	}
	return nil
}
