package download

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/persistence"
)

// Packages is what the server reads: persistence.Registry satisfies it. A
// package's file is the blob under the package's ID.
type Packages interface {
	GetPackage(ctx context.Context, id string) (persistence.Package, error)
	OpenBlob(ctx context.Context, id string) (persistence.Blob, error)
}

// Config configures a Server.
type Config struct {
	Packages Packages
	Key      []byte        // HMAC-SHA256 key of the tokens, at least 32 bytes (required)
	TTL      time.Duration // token lifetime; 0 means 24h
	Clock    clock.Clock   // github.com/otafleet/otafleet/internal/clock; nil means clock.Real()
	// Authorize is asked on every request with a valid, unexpired token: nil means the grant's
	// sub-task still runs; an error means it ended or was stopped (the token is revoked) → 403.
	// nil Authorize allows every valid token. The engine's AuthorizeDownload (package actors) is the
	// rule: a grant holds while its (task, attempt) is the device's running job.
	Authorize func(ctx context.Context, g Grant) error
	// KeepGrants keeps each grant Authorize allowed (and the handle that
	// named it), so that the later requests of the download (the other
	// blocks of a CoAP download) are neither asked about nor looked up
	// again, until Revoke names the grant's device (or Handle hands out a
	// handle for another grant of the device). Set it only when every
	// end of a grant reaches Revoke: the engine's RevokeToken effects do,
	// at every end of a job whose device was told where its package is.
	KeepGrants bool
	// Images serves the package files; nil: NewImages(Packages,
	// DefaultImageBytes), this server's own.
	Images *Images
	// OnServed, if set, is called after each request that sent package bytes: the grant, the first
	// offset sent, the number of bytes actually written, and the package size.
	//
	// n counts the response body bytes written to the connection, so for a
	// request of several ranges (multipart/byteranges) it includes the parts'
	// headers. OnServed runs in the request's goroutine, after the answer. The engine's
	// DownloadServed (package actors) journals it on the device's timeline.
	OnServed func(g Grant, offset, n, size int64)
	// Handles keeps the grants of the handles (Handle) that LwM2M Package
	// URIs carry; persistence.Sessions satisfies it. nil: no handles (an
	// MQTT-only server).
	Handles Handles
	Logger  *slog.Logger // nil: discard
}

// Handles is where a Server keeps the grant of each handle, under its
// name: persistence.Sessions satisfies it. Its writes need not be synced:
// a handle lost with the machine's power is one download refused (4.01),
// which the device machine's deadlines cover.
//
// A record is deleted when its attempt ends (Revoke), and swept when its
// grant is refused for good (Check, SweepHandles): see handles.go.
type Handles interface {
	PutSession(ctx context.Context, transport, id string, value []byte) error
	GetSession(ctx context.Context, transport, id string) ([]byte, error)
	DeleteSession(ctx context.Context, transport, id string) error
	ListSessions(ctx context.Context, transport string, fn func(id string, value []byte) error) error
}

// DefaultTTL is the token lifetime when Config.TTL is 0 (spec 2.7; T11 of 6.1).
const DefaultTTL = 24 * time.Hour

// minKeyLen is the shortest Config.Key New accepts.
const minKeyLen = 32

// Server mints download tokens and serves packages. Create one with New.
type Server struct {
	packages  Packages
	signer    signer
	ttl       time.Duration
	clock     clock.Clock
	authorize func(ctx context.Context, g Grant) error
	onServed  func(g Grant, offset, n, size int64)
	handles   Handles
	images    *Images
	keep      bool    // Config.KeepGrants
	grants    *grants // each device's grant: its handle's record, with keep its authorization
	log       *slog.Logger
	// copyBuffers lends the body copy of each answer a buffer
	// (countingWriter.ReadFrom).
	copyBuffers sync.Pool
}

// New returns a Server for cfg. It fails if Packages is nil, the key is
// shorter than 32 bytes or the TTL is negative.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.Packages == nil:
		return nil, errors.New("download: Config.Packages is nil")
	case len(cfg.Key) < minKeyLen:
		return nil, fmt.Errorf("download: Config.Key has %d bytes, want at least %d", len(cfg.Key), minKeyLen)
	case cfg.TTL < 0:
		return nil, fmt.Errorf("download: Config.TTL is negative (%v)", cfg.TTL)
	}
	s := &Server{
		packages:  cfg.Packages,
		signer:    signer{key: append([]byte(nil), cfg.Key...)},
		ttl:       cfg.TTL,
		clock:     cfg.Clock,
		authorize: cfg.Authorize,
		onServed:  cfg.OnServed,
		handles:   cfg.Handles,
		images:    cfg.Images,
		log:       cfg.Logger,
		keep:      cfg.KeepGrants,
		grants:    newGrants(),
	}
	if s.images == nil {
		s.images = NewImages(cfg.Packages, DefaultImageBytes)
	}
	if s.ttl == 0 {
		s.ttl = DefaultTTL
	}
	if s.clock == nil {
		s.clock = clock.Real()
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Mint returns a token for g and when it expires (now + TTL). Tokens are stateless:
// base64url(payload) "." base64url(HMAC-SHA256(Key, payload)), payload encoding the grant and the expiry,
// so they survive a server restart with the same key. Revocation is Authorize's job.
//
// The grant's IDs are registry IDs (at most persistence.MaxIDLen bytes); a
// grant with IDs of kilobytes would make a token too long to be accepted.
func (s *Server) Mint(g Grant) (token string, expires time.Time) {
	expires = s.clock.Now().Add(s.ttl)
	return s.signer.mint(g, expires), expires
}

// pathPrefix is the URL path of the packages, followed by a package ID.
const pathPrefix = "/packages/"

// Path is the URL path of a package: "/packages/" + url.PathEscape(packageID).
func Path(packageID string) string {
	return pathPrefix + url.PathEscape(packageID)
}

// Handler serves GET and HEAD on /packages/{package_id}.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(s.serveHTTP)
}

// packageID returns the package ID of a request's path, which must be
// "/packages/" followed by one escaped path segment. It works on the escaped
// path, so that an ID with an escaped '/' cannot pass for two segments, and
// does not clean it: "." and ".." are IDs like any other.
func packageID(u *url.URL) (string, bool) {
	rest, ok := strings.CutPrefix(u.EscapedPath(), pathPrefix)
	if !ok || rest == "" || strings.Contains(rest, "/") {
		return "", false
	}
	id, err := url.PathUnescape(rest)
	if err != nil {
		return "", false
	}
	return id, true
}

// Bodies of the refusals. They tell a person with curl what went wrong, and
// no more.
const (
	msgNoToken      = "download token required (Authorization: Bearer)\n"
	msgInvalidToken = "invalid or expired download token\n"
	msgWrongPackage = "the download token is for another package\n"
	msgRevoked      = "the upgrade this download token was issued for has ended or was stopped\n"
)

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	log := s.log.With("remote", r.RemoteAddr, "method", r.Method)

	id, ok := packageID(r.URL)
	if !ok {
		log.LogAttrs(ctx, slog.LevelDebug, "download refused: not a package path", slog.String("path", r.URL.EscapedPath()))
		http.NotFound(w, r)
		return
	}
	log = log.With("package", id)
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		log.LogAttrs(ctx, slog.LevelDebug, "download refused: method not allowed")
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
		return
	}

	tok, present, err := bearerToken(r.Header.Values("Authorization"))
	if !present {
		log.LogAttrs(ctx, slog.LevelDebug, "download refused: no bearer token")
		w.Header().Set("WWW-Authenticate", "Bearer")
		http.Error(w, msgNoToken, http.StatusUnauthorized)
		return
	}
	var g Grant
	if err == nil {
		g, err = s.Check(ctx, tok, id)
	} else {
		err = fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if g != (Grant{}) {
		// The token's signature verified: its grant is worth naming, even
		// when it is refused (expired, another package, revoked).
		log = log.With(grantArgs(g)...)
	}
	switch {
	case err == nil:
		s.serveContent(w, r, log, g)
	case errors.Is(err, ErrInvalidToken):
		log.LogAttrs(ctx, slog.LevelInfo, "download refused: invalid token", slog.String("reason", err.Error()))
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		http.Error(w, msgInvalidToken, http.StatusUnauthorized)
	case errors.Is(err, errOtherPackage):
		log.LogAttrs(ctx, slog.LevelInfo, "download refused: token for another package", slog.String("token_package", g.PackageID))
		http.Error(w, msgWrongPackage, http.StatusForbidden)
	default:
		log.LogAttrs(ctx, slog.LevelInfo, "download refused: token revoked", slog.String("reason", err.Error()))
		http.Error(w, msgRevoked, http.StatusForbidden)
	}
}

// serveContent answers a request whose token Check accepted for grant g:
// the package's bytes, as http.ServeContent does, then OnServed.
func (s *Server) serveContent(w http.ResponseWriter, r *http.Request, log *slog.Logger, g Grant) {
	ctx := r.Context()
	content, err := s.images.Open(ctx, g.PackageID)
	if err != nil {
		if errors.Is(err, persistence.ErrNotFound) || errors.Is(err, persistence.ErrInvalid) {
			log.LogAttrs(ctx, slog.LevelInfo, "download refused: unknown package", slog.String("reason", err.Error()))
			http.NotFound(w, r)
			return
		}
		log.LogAttrs(ctx, slog.LevelError, "download failed: opening the package", slog.String("error", err.Error()))
		http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		return
	}
	defer content.Close()
	pkg := content.Package

	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("ETag", `"`+hex.EncodeToString(pkg.SHA256[:])+`"`)
	h.Set("Cache-Control", "private")
	name := pkg.FileName
	if name == "" {
		name = pkg.ID
	}
	h.Set("Content-Disposition", contentDisposition(name))

	tracked := &trackedBlob{r: content.ReadSeeker(), first: -1}
	cw := &countingWriter{ResponseWriter: w, bufs: &s.copyBuffers}
	// ServeContent sets Last-Modified, unless Created is zero, and handles
	// Range, If-Range, If-None-Match, If-Modified-Since and HEAD.
	http.ServeContent(cw, r, "", pkg.Created, tracked)
	// With several ranges ServeContent reads the blob in a goroutine that
	// may outlive it when the client goes away: stop it before the deferred
	// Close.
	first := tracked.stop()

	n := cw.sent()
	log.LogAttrs(ctx, slog.LevelDebug, "download served",
		slog.Int("status", cw.status), slog.String("range", r.Header.Get("Range")),
		slog.Int64("offset", first), slog.Int64("bytes", n), slog.Int64("size", pkg.Size))
	if n > 0 && s.onServed != nil {
		s.onServed(g, first, n, pkg.Size)
	}
}

// grantArgs are the log attributes naming a grant's sub-task attempt.
func grantArgs(g Grant) []any {
	return []any{"task", g.TaskID, "device", g.DeviceID, "attempt", g.Attempt}
}

// countingWriter counts the body bytes of a successful (200 or 206) answer
// that reached the client's connection. Every byte goes through Write: its
// ReadFrom only lends io.Copy a pooled buffer (ServeContent copies through
// an io.LimitedReader, so io.Copy would otherwise allocate one per request,
// the largest allocation of an MQTT upgrade).
type countingWriter struct {
	http.ResponseWriter
	bufs   *sync.Pool // of *[]byte
	status int
	n      int64
}

func (c *countingWriter) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// ReadFrom copies r through Write with a pooled buffer.
func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	buf, _ := c.bufs.Get().(*[]byte)
	if buf == nil {
		b := make([]byte, copyBufferSize)
		buf = &b
	}
	defer c.bufs.Put(buf)
	return io.CopyBuffer(writeOnly{c}, r, *buf)
}

// writeOnly hides its writer's ReadFrom from io.CopyBuffer.
type writeOnly struct{ w io.Writer }

func (w writeOnly) Write(p []byte) (int, error) { return w.w.Write(p) }

// copyBufferSize is the size of countingWriter.ReadFrom's buffers (io.Copy's).
const copyBufferSize = 32 << 10

// Unwrap lets http.ResponseController reach the connection.
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// sent returns the package bytes written: error bodies (416, 500) do not
// count.
func (c *countingWriter) sent() int64 {
	if c.status != http.StatusOK && c.status != http.StatusPartialContent {
		return 0
	}
	return c.n
}

// trackedBlob is the io.ReadSeeker given to ServeContent. It records the
// offset of the first read, which is the first offset sent, and can be
// stopped: after stop, reads and seeks fail, so a multipart writer goroutine
// that outlives ServeContent never touches a closed blob.
type trackedBlob struct {
	mu      sync.Mutex
	r       io.ReadSeeker
	pos     int64 // offset of the next Read
	first   int64 // offset of the first Read, -1 before it
	stopped bool
}

var errStopped = errors.New("download: request finished")

func (t *trackedBlob) Read(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return 0, errStopped
	}
	if t.first < 0 {
		t.first = t.pos
	}
	n, err := t.r.Read(p)
	t.pos += int64(n)
	return n, err
}

func (t *trackedBlob) Seek(offset int64, whence int) (int64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return 0, errStopped
	}
	pos, err := t.r.Seek(offset, whence)
	if err == nil {
		t.pos = pos
	}
	return pos, err
}

// stop ends the reads and returns the offset of the first one (-1 if none).
func (t *trackedBlob) stop() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopped = true
	return t.first
}

// Errors of Check.
var (
	// ErrInvalidToken: the token is malformed, forged or expired (CoAP 4.01,
	// HTTP 401).
	ErrInvalidToken = errors.New("download: invalid or expired token")
	// ErrForbidden: the token is for another package, or the upgrade it was
	// issued for has ended or was stopped (CoAP 4.03, HTTP 403).
	ErrForbidden = errors.New("download: token for another package, or its upgrade has ended")
	// errOtherPackage tells the first reason of ErrForbidden from the second.
	errOtherPackage = errors.New("the token is for another package")
)

// Handle returns the handle of g: the short form of a token that the LwM2M
// endpoint carries in the path of the Package URI it writes to /5/0/1
// (spec 3.7, project decision 5), 22 characters of base64url: the MAC of the
// grant under Key (HMAC-SHA256, truncated to 128 bits). It keeps the grant
// in Config.Handles under the handle, where Check finds it. A handle does
// not expire, so that every write of one attempt's URI is the same text (a
// LiteOS client resumes its download only when the re-written URI is
// identical): it is valid while Authorize holds its grant (the attempt
// runs). The same grant always has the same handle, after a restart too,
// and any server with the key and the store checks it. It fails without
// Config.Handles, or when the store does.
//
// The record lives while the attempt runs: Revoke deletes it (Handle
// remembers g for that), and so does a Handle for another grant of the
// same device, whose earlier attempt has then ended.
func (s *Server) Handle(ctx context.Context, g Grant) (string, error) {
	if s.handles == nil {
		return "", errors.New("download: Config.Handles is nil: no handles")
	}
	h := s.signer.handle(g)
	if err := s.handles.PutSession(ctx, handleSessions, h, appendGrant(nil, g)); err != nil {
		return "", fmt.Errorf("download: keeping a handle: %w", err)
	}
	if old, ok := s.grants.issue(g); ok {
		s.deleteHandle(ctx, old, "the device's next attempt")
	}
	return h, nil
}

// handleSessions is the name under which Config.Handles keeps the handles.
const handleSessions = "download-handle"

// errUnknownHandle: a handle that Config.Handles does not hold.
var errUnknownHandle = errors.New("download: unknown handle")

// grantOf returns the grant of handle h: the one Config.Handles keeps under
// h, if h is its MAC.
func (s *Server) grantOf(ctx context.Context, h string) (Grant, error) {
	if s.handles == nil {
		return Grant{}, fmt.Errorf("%w: %w", ErrInvalidToken, errUnknownHandle)
	}
	v, err := s.handles.GetSession(ctx, handleSessions, h)
	if errors.Is(err, persistence.ErrNotFound) || errors.Is(err, persistence.ErrInvalid) {
		return Grant{}, fmt.Errorf("%w: %w", ErrInvalidToken, errUnknownHandle)
	}
	if err != nil {
		return Grant{}, fmt.Errorf("download: reading a handle: %w", err)
	}
	g, ok := decodeGrant(v)
	if !ok || s.signer.handle(g) != h {
		return Grant{}, fmt.Errorf("%w: %w", ErrInvalidToken, errBadSignature)
	}
	return g, nil
}

// Check is the one token check of a download, over HTTP (Handler) or not
// (the LwM2M endpoint serves packages block-wise over CoAP): it verifies
// the token's signature and expiry, that it is for packageID, and asks
// Authorize, in that order. A token is what Mint returns or a handle
// (Handle), whose grant is found in Config.Handles and which never
// expires. It returns the grant, or an error wrapping ErrInvalidToken or
// ErrForbidden, or the store's error when reading a handle failed. With an
// error, the grant is the token's when its signature verified (an expired
// token, another package, a revoked upgrade) and zero otherwise.
//
// With Config.KeepGrants, a grant Authorize allowed is not asked about
// again, and its handle not looked up again, until Revoke names its device
// (or Handle hands out a handle for another grant of the device). A grant
// Authorize refuses for good (an error wrapping
// transport.ErrDownloadRevoked) is forgotten, with the record of its
// handle.
func (s *Server) Check(ctx context.Context, token, packageID string) (Grant, error) {
	var g Grant
	var err error
	handle, kept := isHandle(token), false
	if handle && s.keep {
		g, kept = s.grants.ofHandle(token)
	}
	if handle && !kept {
		g, err = s.grantOf(ctx, token)
		if err != nil {
			return Grant{}, err
		}
	} else if !handle {
		if g, _, err = s.signer.verify(token, s.clock.Now()); err != nil {
			return g, fmt.Errorf("%w: %w", ErrInvalidToken, err)
		}
	}
	if g.PackageID != packageID {
		return g, fmt.Errorf("%w: %w %q", ErrForbidden, errOtherPackage, g.PackageID)
	}
	if s.authorize == nil || kept {
		return g, nil
	}
	var gen uint64
	if s.keep {
		if kept, gen = s.grants.allowed(g); kept {
			return g, nil
		}
	}
	if err := s.authorize(ctx, g); err != nil {
		if revoked(err) {
			// Its attempt ended: its entry goes, and its record with
			// it, for a handle or a grant this server handed a handle
			// out for (its revocation may have come while this server
			// was down).
			if issued := s.grants.drop(g); (handle || issued) && s.handles != nil {
				s.deleteHandle(ctx, g, "refused")
			}
		}
		return g, fmt.Errorf("%w: %w", ErrForbidden, err)
	}
	if s.keep {
		h := ""
		if handle {
			h = token
		}
		s.grants.keep(g, h, gen)
	}
	return g, nil
}

// Revoke tells the server that attempt attempt of device deviceID's
// sub-task of task taskID ended (its job ended, was stopped or retried: the
// engine's RevokeToken), and so that no grant of the device holds: with
// Config.KeepGrants, the next request under any of them asks Authorize
// again, and one being asked is not kept (without, Authorize is asked on
// every request anyway). The record of the attempt's handle, if this
// server handed one out (Handle) or found it running (SweepHandles), is
// deleted from Config.Handles: the handle is unknown from then on, until
// Handle is asked for the same grant again. It returns the store's error.
func (s *Server) Revoke(ctx context.Context, taskID, deviceID string, attempt uint32) error {
	g, ok := s.grants.revoke(taskID, deviceID, attempt)
	if !ok {
		return nil
	}
	if err := s.handles.DeleteSession(ctx, handleSessions, s.signer.handle(g)); err != nil {
		return fmt.Errorf("download: deleting the handle of device %q: %w", deviceID, err)
	}
	return nil
}

// Open returns package id's record and bytes, verified, from the server's
// Images (Config.Images): the one package reader of the HTTP and CoAP
// paths. Close the Content when done.
func (s *Server) Open(ctx context.Context, id string) (*Content, error) {
	return s.images.Open(ctx, id)
}

// ErrPackageMismatch: a package's file differs in size or SHA-256 from its
// record, which is what devices were told (file size, signature) and what
// the ETag names. Such a file is never served: the device's own check would
// only fail after the whole download.
var ErrPackageMismatch = errors.New("download: package file does not match its record")

// OpenPackage is the one verified package opener of the HTTP and CoAP
// paths: it returns package id's record and its file, open for reading
// (the caller closes it), once the file's size and SHA-256 are the
// record's. Errors wrap persistence.ErrNotFound or persistence.ErrInvalid
// for a package (or a file) that does not exist, ErrPackageMismatch for a
// file that differs from its record, and otherwise the store's error.
func OpenPackage(ctx context.Context, packages Packages, id string) (persistence.Blob, persistence.Package, error) {
	pkg, err := packages.GetPackage(ctx, id)
	if err != nil {
		return nil, persistence.Package{}, fmt.Errorf("download: package %q: %w", id, err)
	}
	blob, err := packages.OpenBlob(ctx, pkg.ID)
	if err != nil {
		return nil, persistence.Package{}, fmt.Errorf("download: the file of package %q: %w", id, err)
	}
	if size, sum := blob.Size(), blob.SHA256(); size != pkg.Size || sum != pkg.SHA256 {
		_ = blob.Close()
		return nil, persistence.Package{}, fmt.Errorf("%w: package %q has %d bytes, SHA-256 %x; its file %d bytes, SHA-256 %x",
			ErrPackageMismatch, id, pkg.Size, pkg.SHA256, size, sum)
	}
	return blob, pkg, nil
}

// Served reports bytes of a package sent outside Handler to OnServed.
func (s *Server) Served(g Grant, offset, n, size int64) {
	if n > 0 && s.onServed != nil {
		s.onServed(g, offset, n, size)
	}
}
