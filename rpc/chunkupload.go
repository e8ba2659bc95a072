package rpc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/persistence"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// Limits of UploadPackageChunk.
const (
	// MaxUploadChunkBytes bounds the data of one UploadPackageChunk call.
	MaxUploadChunkBytes = 1 << 20
	// MaxChunkUploads bounds the chunked uploads in progress at once; a
	// first call beyond it fails with resource_exhausted.
	MaxChunkUploads = 32
	// ChunkUploadIdle is how long a chunked upload waits for its next call
	// before it is abandoned and its bytes deleted.
	ChunkUploadIdle = time.Hour
)

var (
	errUploadAbandoned = errors.New("rpc: chunked upload abandoned (no call for an hour)")
	errUploadFailed    = errors.New("rpc: chunked upload failed")
	errUploadsClosed   = errors.New("the server is shutting down: chunked uploads are closed")
)

// chunkUpload is one chunked upload in progress: the package being created
// (ID and metadata checked at the first call) and its blob, written through
// a blobPipe whose WriteBlob runs across the upload's calls.
type chunkUpload struct {
	id string
	// mu is held by the call running on the upload; a second call finds
	// it locked and is refused.
	mu       sync.Mutex
	pkg      persistence.Package
	total    int64
	received int64
	wantSum  []byte // from metadata.sha256, nil when not given
	blob     *blobPipe
	cancel   context.CancelFunc // ends the blob's write
	last     time.Time          // the last call's time
	idle     clock.Timer        // abandons the upload ChunkUploadIdle after last
	done     bool               // finished or abandoned: out of the table
}

// chunkUploads are the chunked uploads in progress, by upload ID.
type chunkUploads struct {
	mu     sync.Mutex
	m      map[string]*chunkUpload
	closed bool // the server shuts down: no new upload
}

func newChunkUploads() *chunkUploads { return &chunkUploads{m: map[string]*chunkUpload{}} }

func (t *chunkUploads) get(id string) *chunkUpload {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[id]
}

// add registers u unless MaxChunkUploads are in progress or the table is
// closed.
func (t *chunkUploads) add(u *chunkUpload) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return connect.NewError(connect.CodeUnavailable, errUploadsClosed)
	}
	if len(t.m) >= MaxChunkUploads {
		return connect.NewError(connect.CodeResourceExhausted,
			fmt.Errorf("upload_id: %d chunked uploads are in progress already, at most %d", len(t.m), MaxChunkUploads))
	}
	t.m[u.id] = u
	return nil
}

// closeUploads refuses new uploads and abandons those in progress (the
// server shuts down), waiting for each one's running call.
func (s *packageServer) closeUploads() {
	s.chunks.mu.Lock()
	s.chunks.closed = true
	open := make([]*chunkUpload, 0, len(s.chunks.m))
	for _, u := range s.chunks.m {
		open = append(open, u)
	}
	s.chunks.mu.Unlock()
	for _, u := range open {
		u.mu.Lock()
		if !u.done {
			s.endUpload(u, errUploadsClosed)
		}
		u.mu.Unlock()
	}
}

func (t *chunkUploads) remove(id string) {
	t.mu.Lock()
	delete(t.m, id)
	t.mu.Unlock()
}

// endUpload takes u (whose mu the caller holds) out of the table and ends its
// blob with cause (nil: store it); it returns WriteBlob's result.
func (s *packageServer) endUpload(u *chunkUpload, cause error) blobResult {
	u.done = true
	u.idle.Stop()
	s.chunks.remove(u.id)
	res := u.blob.finish(cause)
	u.cancel()
	return res
}

// abandon is u's idle timer: an upload whose last call is ChunkUploadIdle
// old is ended and its bytes deleted.
func (s *packageServer) abandon(u *chunkUpload) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.done {
		return
	}
	if left := ChunkUploadIdle - s.clock.Since(u.last); left > 0 {
		u.idle.Reset(left) // a call came since the timer was armed
		return
	}
	s.endUpload(u, errUploadAbandoned)
	s.log.Info("rpc: chunked upload abandoned", "upload_id", u.id, "package_id", u.pkg.ID, "received", u.received, "total_size", u.total)
}

// checkSHA256 parses a lowercase hex SHA-256.
func checkSHA256(field, h string) ([]byte, error) {
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != sha256.Size || h != strings.ToLower(h) {
		return nil, invalid(field, "not 64 lowercase hex digits")
	}
	return b, nil
}

// startUpload checks a first call and registers its upload, locked. Every
// check of the call comes first, so that a refused first call leaves no
// upload behind (its client never learns the upload_id).
func (s *packageServer) startUpload(ctx context.Context, m *v1.UploadPackageChunkRequest) (*chunkUpload, error) {
	const op = "UploadPackageChunk"
	md := m.GetMetadata()
	if md == nil {
		return nil, invalid("metadata", "required on the first call (without upload_id)")
	}
	if m.GetOffset() != 0 {
		return nil, invalid("offset", "%d on the first call (without upload_id), must be 0", m.GetOffset())
	}
	total := m.GetTotalSize()
	switch {
	case total <= 0:
		return nil, invalid("total_size", "%d, must be 1 .. %d on the first call", total, int64(MaxUploadBytes))
	case total > MaxUploadBytes:
		return nil, connect.NewError(connect.CodeResourceExhausted,
			fmt.Errorf("total_size: %d bytes, at most %d", total, int64(MaxUploadBytes)))
	case md.Size != nil && md.GetSize() != total:
		return nil, invalid("metadata.size", "%d, but total_size is %d", md.GetSize(), total)
	case int64(len(m.GetData())) > total:
		return nil, invalid("data", "ends at byte %d, past total_size %d", len(m.GetData()), total)
	case int64(len(m.GetData())) == total && m.GetSha256() == "":
		// Refused before the upload exists: the client, which gets no
		// upload_id, would otherwise leave it behind.
		return nil, invalid("sha256", "required on the call that completes the file (%d bytes = total_size)", total)
	}
	p, err := uploadMeta(md).validate()
	if err != nil {
		return nil, err
	}
	u := &chunkUpload{id: newID(), total: total}
	if md.Sha256 != nil {
		if u.wantSum, err = checkSHA256("metadata.sha256", md.GetSha256()); err != nil {
			return nil, err
		}
	}
	if err := s.prepare(ctx, op, &p); err != nil {
		return nil, err
	}
	u.pkg = p
	u.mu.Lock() // the caller's until its call ends; taken before u is seen
	if err := s.chunks.add(u); err != nil {
		u.mu.Unlock()
		return nil, err
	}
	// The blob's write outlives this call: it spans the upload's calls.
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	u.cancel = cancel
	u.blob = s.startBlob(bctx, p.ID, total)
	u.last = s.clock.Now()
	u.idle = s.clock.AfterFunc(ChunkUploadIdle, func() { s.abandon(u) })
	return u, nil
}

// UploadPackageChunk appends one call's data to a chunked upload, and
// creates the package on the call that completes the file.
func (s *packageServer) UploadPackageChunk(ctx context.Context, req *connect.Request[v1.UploadPackageChunkRequest]) (*connect.Response[v1.UploadPackageChunkResponse], error) {
	const op = "UploadPackageChunk"
	m := req.Msg
	data := m.GetData()
	if n := len(data); n > MaxUploadChunkBytes {
		return nil, invalid("data", "%d bytes in one call, at most %d", n, MaxUploadChunkBytes)
	}
	var sum []byte
	if m.GetSha256() != "" {
		var err error
		if sum, err = checkSHA256("sha256", m.GetSha256()); err != nil {
			return nil, err
		}
	}
	var u *chunkUpload
	if m.GetUploadId() == "" {
		var err error
		if u, err = s.startUpload(ctx, m); err != nil {
			return nil, err
		}
	} else {
		if err := checkID("upload_id", m.GetUploadId()); err != nil {
			return nil, err
		}
		if m.GetMetadata() != nil {
			return nil, invalid("metadata", "only the first call (without upload_id) carries metadata")
		}
		if u = s.chunks.get(m.GetUploadId()); u == nil {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf(
				"upload_id: upload %q not found: it finished, failed or was abandoned; start again with offset 0 and metadata", m.GetUploadId()))
		}
		if !u.mu.TryLock() {
			return nil, connect.NewError(connect.CodeAborted, fmt.Errorf(
				"upload_id: another call of upload %q is running; send one call at a time", u.id))
		}
		if u.done { // ended between the lookup and the lock
			u.mu.Unlock()
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("upload_id: upload %q has ended", u.id))
		}
		if t := m.GetTotalSize(); t != 0 && t != u.total {
			u.mu.Unlock()
			return nil, invalid("total_size", "%d, but the upload's first call said %d", t, u.total)
		}
	}
	defer u.mu.Unlock()
	u.last = s.clock.Now()
	answer := func(p *v1.Package) *connect.Response[v1.UploadPackageChunkResponse] {
		return connect.NewResponse(&v1.UploadPackageChunkResponse{UploadId: u.id, NextOffset: u.received, Package: p})
	}
	if len(data) == 0 {
		return answer(nil), nil // where the upload stands
	}
	if off := m.GetOffset(); off != u.received {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
			"offset: %d, expected %d (the bytes received so far); resume from offset %d", off, u.received, u.received))
	}
	end := u.received + int64(len(data))
	if end > u.total {
		return nil, invalid("data", "ends at byte %d, past total_size %d", end, u.total)
	}
	last := end == u.total
	if last && sum == nil {
		return nil, invalid("sha256", "required on the call that completes the file (offset %d + %d bytes = total_size %d)", u.received, len(data), u.total)
	}
	if err := u.blob.write(data); err != nil {
		res := s.endUpload(u, errUploadFailed)
		return nil, toConnect(s.log, op, res.err)
	}
	u.received = end
	if !last {
		return answer(nil), nil
	}
	res := s.endUpload(u, nil)
	switch {
	case res.err != nil:
		return nil, toConnect(s.log, op, res.err)
	case res.size != u.total:
		// Offsets and the WriteBlob limit make this impossible; say so
		// rather than store a wrong package.
		s.dropBlob(op, u.pkg.ID)
		s.log.Error("rpc: chunked upload stored a wrong size", "upload_id", u.id, "size", res.size, "total_size", u.total)
		return nil, connect.NewError(connect.CodeInternal, errInternal)
	case !bytes.Equal(sum, res.sum[:]):
		s.dropBlob(op, u.pkg.ID)
		return nil, invalid("sha256", "declared %s, the uploaded file's SHA-256 is %x; the upload is deleted", m.GetSha256(), res.sum)
	case u.wantSum != nil && !bytes.Equal(u.wantSum, res.sum[:]):
		s.dropBlob(op, u.pkg.ID)
		return nil, invalid("metadata.sha256", "declared %x, the uploaded file's SHA-256 is %x; the upload is deleted", u.wantSum, res.sum)
	}
	u.pkg.Size, u.pkg.SHA256 = res.size, res.sum
	if err := s.store(ctx, op, u.pkg); err != nil {
		return nil, err
	}
	return answer(packageToProto(u.pkg)), nil
}
