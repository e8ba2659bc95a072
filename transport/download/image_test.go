package download

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
)

// imageStore is a memstore of packages that counts the blobs opened and
// can corrupt the bytes read of one package (its record and the blob's
// recorded SHA-256 stay those written).
type imageStore struct {
	*memstore.Store
	opens   atomic.Int64
	corrupt atomic.Value  // string: the package whose bytes are flipped
	gate    chan struct{} // when set, OpenBlob waits for it to close
}

func newImageStore(t *testing.T, sizes map[string]int) *imageStore {
	t.Helper()
	s := &imageStore{Store: memstore.New()}
	s.corrupt.Store("")
	ctx := context.Background()
	if err := s.PutProduct(ctx, persistence.Product{ID: "p", Name: "p", Protocol: persistence.ProtocolLWM2M}); err != nil {
		t.Fatal(err)
	}
	for id, n := range sizes {
		size, sum, err := s.WriteBlob(ctx, id, bytes.NewReader(contentOf(id, n)), 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.PutPackage(ctx, persistence.Package{ID: id, ProductID: "p", Type: persistence.PackageFirmware, Version: "2.0", Size: size, SHA256: sum}); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// contentOf is package id's n bytes.
func contentOf(id string, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ id[0]
	}
	return b
}

func (s *imageStore) OpenBlob(ctx context.Context, id string) (persistence.Blob, error) {
	s.opens.Add(1)
	if s.gate != nil {
		<-s.gate
	}
	b, err := s.Store.OpenBlob(ctx, id)
	if err != nil || s.corrupt.Load() != id {
		return b, err
	}
	return flipped{b}, nil
}

// flipped is a blob whose byte 10 reads flipped: a file corrupted in the
// store under a header that still names the right size and SHA-256.
type flipped struct{ persistence.Blob }

func (f flipped) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.Blob.ReadAt(p, off)
	if off <= 10 && 10 < off+int64(n) {
		p[10-off] ^= 0xFF
	}
	return n, err
}

// open opens id and checks its bytes.
func open(t *testing.T, c *Images, id string, n int) *Content {
	t.Helper()
	p, err := c.Open(context.Background(), id)
	if err != nil {
		t.Fatalf("Open(%s): %v", id, err)
	}
	b, err := p.Slice(0, p.Size())
	if err != nil || !bytes.Equal(b, contentOf(id, n)) {
		t.Fatalf("Open(%s): %d bytes, %v", id, len(b), err)
	}
	return p
}

// held returns the IDs of the images c holds, loaded or loading.
func held(c *Images) map[string]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]bool{}
	for id := range c.byID {
		out[id] = true
	}
	return out
}

// TestImagesShared: a package is read from the store once; every reader
// gets slices of the one image, not copies, also after Close; ranges are
// checked.
func TestImagesShared(t *testing.T) {
	st := newImageStore(t, map[string]int{"a": 5000})
	c := NewImages(st, 1<<20)
	p1 := open(t, c, "a", 5000)
	p2 := open(t, c, "a", 5000)
	if p1.im == nil || p1.im != p2.im {
		t.Fatal("two readers of one package do not share its image")
	}
	s1, _ := p1.Slice(100, 50)
	s2, _ := p2.Slice(100, 50)
	if &s1[0] != &s2[0] || cap(s1) != 50 {
		t.Errorf("slices are copies, or reach past their range (cap %d)", cap(s1))
	}
	if _, err := p1.Slice(4990, 11); err == nil {
		t.Error("a slice past the end was served")
	}
	rs := p2.ReadSeeker()
	if _, err := rs.Seek(4000, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if rest, _ := io.ReadAll(rs); !bytes.Equal(rest, contentOf("a", 5000)[4000:]) {
		t.Errorf("ReadSeeker from 4000: %d bytes", len(rest))
	}
	_ = p1.Close()
	_ = p2.Close()
	_ = p2.Close() // twice: nothing more
	if !bytes.Equal(s1, contentOf("a", 5000)[100:150]) {
		t.Error("a slice changed after Close")
	}
	if _, err := p1.Slice(0, 1); err == nil {
		t.Error("Slice after Close succeeded")
	}
	open(t, c, "a", 5000).Close()
	if n := st.opens.Load(); n != 1 {
		t.Errorf("the store was opened %d times for one package, want 1", n)
	}
	if b, n := c.Bytes(); b != 5000 || n != 1 {
		t.Errorf("Bytes() = %d, %d; want 5000, 1", b, n)
	}
}

// TestImagesBound: the images held never pass the bound; the least recently
// used image no one reads goes first; an image being read is never evicted
// (the package that does not fit beside it is streamed); a package larger
// than the bound is streamed; a bound of 0 holds nothing.
func TestImagesBound(t *testing.T) {
	st := newImageStore(t, map[string]int{"a": 1000, "b": 1000, "c": 1000, "d": 1000, "huge": 3001})
	c := NewImages(st, 3000)
	for _, id := range []string{"a", "b", "c"} {
		open(t, c, id, 1000).Close()
	}
	open(t, c, "a", 1000).Close() // a is used again: b is the least recent
	open(t, c, "d", 1000).Close()
	if h := held(c); len(h) != 3 || !h["a"] || !h["c"] || !h["d"] {
		t.Fatalf("after d: %v, want a, c, d", h)
	}
	if b, _ := c.Bytes(); b != 3000 {
		t.Errorf("%d bytes held, want 3000", b)
	}

	// Every image held is being read: b does not fit and is streamed.
	var readers []*Content
	for _, id := range []string{"a", "c", "d"} {
		readers = append(readers, open(t, c, id, 1000))
	}
	opens := st.opens.Load()
	pb := open(t, c, "b", 1000)
	if pb.im != nil || pb.blob == nil {
		t.Error("b was not streamed while a, c and d are read")
	}
	pb.Close()
	if h := held(c); len(h) != 3 || h["b"] {
		t.Errorf("while a, c, d are read: %v", h)
	}
	// Once c is no longer read, b takes its place.
	readers[1].Close()
	open(t, c, "b", 1000).Close()
	if h := held(c); len(h) != 3 || !h["a"] || !h["b"] || !h["d"] {
		t.Errorf("after c was closed: %v, want a, b, d", h)
	}
	readers[0].Close()
	readers[2].Close()
	if n := st.opens.Load() - opens; n != 2 {
		t.Errorf("b read from the store %d times, want 2 (streamed, then its image)", n)
	}

	ph := open(t, c, "huge", 3001)
	if ph.im != nil {
		t.Error("a package larger than the bound got an image")
	}
	ph.Close()
	if b, _ := c.Bytes(); b > 3000 {
		t.Errorf("%d bytes held, over the bound", b)
	}

	none := NewImages(st, 0)
	p := open(t, none, "a", 1000)
	if p.im != nil {
		t.Error("a bound of 0 held an image")
	}
	p.Close()
	if b, n := none.Bytes(); b != 0 || n != 0 {
		t.Errorf("a bound of 0 holds %d bytes in %d images", b, n)
	}
}

// TestImagesRefuse: a file whose bytes differ from its record's SHA-256
// (a corruption the blob's own header does not show) is refused with
// ErrPackageMismatch, and not kept: once the store reads right, it is
// served. An unknown package is ErrNotFound.
func TestImagesRefuse(t *testing.T) {
	st := newImageStore(t, map[string]int{"a": 2000})
	c := NewImages(st, 1<<20)
	st.corrupt.Store("a")
	if _, err := c.Open(context.Background(), "a"); !errors.Is(err, ErrPackageMismatch) {
		t.Fatalf("a corrupted file: %v, want ErrPackageMismatch", err)
	}
	if b, n := c.Bytes(); b != 0 || n != 0 {
		t.Errorf("after a refused load: %d bytes in %d images", b, n)
	}
	st.corrupt.Store("")
	open(t, c, "a", 2000).Close()
	if _, err := c.Open(context.Background(), "nope"); !errors.Is(err, persistence.ErrNotFound) {
		t.Errorf("an unknown package: %v, want ErrNotFound", err)
	}
	// A record that does not match its file's header (OpenPackage's check).
	ctx := context.Background()
	pkg, _ := st.GetPackage(ctx, "a")
	pkg.ID, pkg.Size = "a2", 1999
	if err := st.PutPackage(ctx, pkg); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.WriteBlob(ctx, "a2", bytes.NewReader(contentOf("a", 2000)), 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Open(ctx, "a2"); !errors.Is(err, ErrPackageMismatch) {
		t.Errorf("a record of another size: %v, want ErrPackageMismatch", err)
	}
}

// TestImagesConcurrentReaders: many readers of packages not yet loaded
// load each once, wait for it, and all read the same bytes.
func TestImagesConcurrentReaders(t *testing.T) {
	st := newImageStore(t, map[string]int{"a": 70_000, "b": 30_000})
	st.gate = make(chan struct{})
	c := NewImages(st, 1<<20)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		id, n := "a", 70_000
		if i%2 == 1 {
			id, n = "b", 30_000
		}
		wg.Go(func() {
			p, err := c.Open(context.Background(), id)
			if err != nil {
				errs <- err
				return
			}
			defer p.Close()
			off := int64(i * 100)
			b, err := p.Slice(off, 100)
			if err != nil || !bytes.Equal(b, contentOf(id, n)[off:off+100]) {
				errs <- fmt.Errorf("%s at %d: %v", id, off, err)
			}
		})
	}
	close(st.gate) // the loads go on once the readers are under way
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := st.opens.Load(); n != 2 {
		t.Errorf("the store was opened %d times for 2 packages, want 2", n)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.idle.Len() != 2 {
		t.Errorf("%d idle images after every reader closed, want 2", c.idle.Len())
	}
	for id, im := range c.byID {
		if im.readers != 0 {
			t.Errorf("%s: %d readers after every reader closed", id, im.readers)
		}
	}
}

// TestImagesReaderGivesUp: a reader whose context ends while the image
// loads gets its error; the load goes on for the others.
func TestImagesReaderGivesUp(t *testing.T) {
	st := newImageStore(t, map[string]int{"a": 1000})
	st.gate = make(chan struct{})
	c := NewImages(st, 1<<20)
	loaded := make(chan *Content)
	go func() {
		p, err := c.Open(context.Background(), "a")
		if err != nil {
			t.Error(err)
		}
		loaded <- p
	}()
	// Wait until the first reader is loading.
	for len(held(c)) == 0 {
		runtime.Gosched()
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Open(ctx, "a"); !errors.Is(err, context.Canceled) {
		t.Errorf("a reader whose context ended: %v", err)
	}
	close(st.gate)
	p := <-loaded
	if p == nil || p.im == nil {
		t.Fatal("the first reader got no image")
	}
	p.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	if im := c.byID["a"]; im == nil || im.readers != 0 || im.idle == nil {
		t.Errorf("image a after both readers: %+v", im)
	}
}
