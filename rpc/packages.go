package rpc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/otafleet/otafleet/persistence"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// Package field limits (spec 5.8 and package.proto).
const (
	maxVersionLen      = 256
	maxPCPVersionBytes = 16
	maxSourceVersions  = 20
	maxFileNameBytes   = 255
	maxDescription     = 1024
	maxCustomInfo      = 4096
)

// packageServer implements PackageService. DeletePackage does not know
// tasks: refusing to delete a package an unfinished task uses is the task
// layer's job.
type packageServer struct {
	*server
	chunks *chunkUploads // UploadPackageChunk's uploads in progress
}

var _ otafleetv1connect.PackageServiceHandler = (*packageServer)(nil)

func packageToProto(p persistence.Package) *v1.Package {
	out := &v1.Package{
		PackageId:      p.ID,
		ProductId:      p.ProductID,
		Version:        p.Version,
		SourceVersions: append([]string(nil), p.SourceVersions...),
		FileName:       p.FileName,
		Size:           p.Size,
		Sha256:         hex.EncodeToString(p.SHA256[:]),
		Description:    p.Description,
		CustomInfo:     p.CustomInfo,
		OmitSign:       p.OmitSign,
		CreateTime:     timestamppb.New(p.Created),
	}
	switch p.Type {
	case persistence.PackageFirmware:
		out.PackageType = v1.PackageType_PACKAGE_TYPE_FIRMWARE
	case persistence.PackageSoftware:
		out.PackageType = v1.PackageType_PACKAGE_TYPE_SOFTWARE
	}
	return out
}

// checkVersion validates a version (spec 5.8): 1..256 characters of
// [A-Za-z0-9_.-], at most 16 bytes when pcp.
func checkVersion(field, v string, pcp bool) error {
	if v == "" {
		return invalid(field, "required")
	}
	if len(v) > maxVersionLen {
		return invalid(field, "%d characters, at most %d", len(v), maxVersionLen)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-') {
			return invalid(field, "character %q at byte %d is not one of [A-Za-z0-9_.-]", c, i)
		}
	}
	if pcp && len(v) > maxPCPVersionBytes {
		return invalid(field, "%d bytes, at most %d for software packages of PCP products", len(v), maxPCPVersionBytes)
	}
	return nil
}

// isCJK reports whether r is a Chinese, Japanese or Korean character.
func isCJK(r rune) bool {
	return unicode.In(r, unicode.Han, unicode.Hiragana, unicode.Katakana, unicode.Hangul, unicode.Bopomofo) ||
		(r >= 0x3000 && r <= 0x303F) || (r >= 0xFF00 && r <= 0xFFEF) // CJK punctuation, full-width forms
}

// checkFileName validates a package file name: 1..255 bytes of UTF-8, no
// '/', '\\', control or CJK characters, not "." or "..".
func checkFileName(name string) error {
	const field = "file_name"
	if name == "" {
		return invalid(field, "required")
	}
	if len(name) > maxFileNameBytes {
		return invalid(field, "%d bytes, at most %d", len(name), maxFileNameBytes)
	}
	if !utf8.ValidString(name) {
		return invalid(field, "not valid UTF-8")
	}
	if name == "." || name == ".." {
		return invalid(field, "%q is not a file name", name)
	}
	for _, r := range name {
		switch {
		case r == '/' || r == '\\':
			return invalid(field, "contains %q", r)
		case unicode.IsControl(r):
			return invalid(field, "contains the control character %U", r)
		case isCJK(r):
			return invalid(field, "contains the CJK character %q", r)
		}
	}
	return nil
}

// pkgMeta is the metadata shared by CreatePackage and UploadPackage.
type pkgMeta struct {
	productID      string
	packageType    v1.PackageType
	version        string
	sourceVersions []string
	fileName       string
	description    string
	customInfo     string
	omitSign       bool
}

// validate checks m's fields on their own and returns the package they
// describe (without ID, size, digest and time). The PCP version limit needs
// the product: see checkForProduct.
func (m pkgMeta) validate() (persistence.Package, error) {
	var p persistence.Package
	if err := checkID("product_id", m.productID); err != nil {
		return p, err
	}
	switch m.packageType {
	case v1.PackageType_PACKAGE_TYPE_FIRMWARE:
		p.Type = persistence.PackageFirmware
	case v1.PackageType_PACKAGE_TYPE_SOFTWARE:
		p.Type = persistence.PackageSoftware
	case v1.PackageType_PACKAGE_TYPE_UNSPECIFIED:
		return p, invalid("package_type", "required: PACKAGE_TYPE_FIRMWARE or PACKAGE_TYPE_SOFTWARE")
	default:
		return p, invalid("package_type", "unknown value %d", int32(m.packageType))
	}
	if err := checkVersion("version", m.version, false); err != nil {
		return p, err
	}
	if n := len(m.sourceVersions); n > maxSourceVersions {
		return p, invalid("source_versions", "%d versions, at most %d", n, maxSourceVersions)
	}
	for i, sv := range m.sourceVersions {
		if err := checkVersion(fmt.Sprintf("source_versions[%d]", i), sv, false); err != nil {
			return p, err
		}
	}
	if err := checkFileName(m.fileName); err != nil {
		return p, err
	}
	if err := checkText("description", m.description, false, maxDescription, true); err != nil {
		return p, err
	}
	if err := checkText("custom_info", m.customInfo, false, maxCustomInfo, true); err != nil {
		return p, err
	}
	p.ProductID = m.productID
	p.Version = m.version
	if len(m.sourceVersions) > 0 {
		p.SourceVersions = append([]string(nil), m.sourceVersions...)
	}
	p.FileName = m.fileName
	p.Description = m.description
	p.CustomInfo = m.customInfo
	p.OmitSign = m.omitSign
	return p, nil
}

// checkForProduct applies the rules that depend on the product: software
// packages of PCP products carry versions of at most 16 bytes.
func checkForProduct(p persistence.Package, prod persistence.Product) error {
	if p.Type != persistence.PackageSoftware || !prod.SoftwarePCP {
		return nil
	}
	if err := checkVersion("version", p.Version, true); err != nil {
		return err
	}
	for i, sv := range p.SourceVersions {
		if err := checkVersion(fmt.Sprintf("source_versions[%d]", i), sv, true); err != nil {
			return err
		}
	}
	return nil
}

func createMeta(r *v1.CreatePackageRequest) pkgMeta {
	return pkgMeta{
		productID: r.GetProductId(), packageType: r.GetPackageType(), version: r.GetVersion(),
		sourceVersions: r.GetSourceVersions(), fileName: r.GetFileName(),
		description: r.GetDescription(), customInfo: r.GetCustomInfo(), omitSign: r.GetOmitSign(),
	}
}

func uploadMeta(r *v1.UploadPackageMetadata) pkgMeta {
	return pkgMeta{
		productID: r.GetProductId(), packageType: r.GetPackageType(), version: r.GetVersion(),
		sourceVersions: r.GetSourceVersions(), fileName: r.GetFileName(),
		description: r.GetDescription(), customInfo: r.GetCustomInfo(), omitSign: r.GetOmitSign(),
	}
}

// validateCreatePackage checks req on its own (not the product).
func validateCreatePackage(req *v1.CreatePackageRequest) (persistence.Package, error) {
	p, err := createMeta(req).validate()
	if err != nil {
		return p, err
	}
	if n := len(req.GetContent()); n == 0 {
		return p, invalid("content", "required (1 byte to 8 MiB)")
	} else if n > MaxInlineContent {
		return p, invalid("content", "%d bytes, at most %d; use UploadPackage for larger files", n, MaxInlineContent)
	}
	return p, nil
}

// prepare checks the product of p and completes p's ID and time.
func (s *packageServer) prepare(ctx context.Context, op string, p *persistence.Package) error {
	prod, err := s.product(ctx, op, p.ProductID)
	if err != nil {
		return err
	}
	if err := checkForProduct(*p, prod); err != nil {
		return err
	}
	p.ID = newID()
	p.Created = s.clock.Now()
	return nil
}

// store puts p's metadata, its blob already written; on failure it deletes
// the blob.
func (s *packageServer) store(ctx context.Context, op string, p persistence.Package) error {
	if err := s.reg.PutPackage(ctx, p); err != nil {
		s.dropBlob(op, p.ID)
		return toConnect(s.log, op, err)
	}
	return nil
}

// dropBlob deletes blob id, logging a failure; it runs even when the
// request's context has ended.
func (s *packageServer) dropBlob(op, id string) {
	err := s.reg.DeleteBlob(context.Background(), id)
	if err != nil && !errors.Is(err, persistence.ErrNotFound) {
		s.log.Error("rpc: cannot delete blob", "op", op, "blob", id, "err", err)
	}
}

func (s *packageServer) CreatePackage(ctx context.Context, req *connect.Request[v1.CreatePackageRequest]) (*connect.Response[v1.CreatePackageResponse], error) {
	p, err := validateCreatePackage(req.Msg)
	if err != nil {
		return nil, err
	}
	if err := s.prepare(ctx, "CreatePackage", &p); err != nil {
		return nil, err
	}
	p.Size, p.SHA256, err = s.reg.WriteBlob(ctx, p.ID, bytes.NewReader(req.Msg.GetContent()), MaxInlineContent)
	if err != nil {
		return nil, toConnect(s.log, "CreatePackage", err)
	}
	if err := s.store(ctx, "CreatePackage", p); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.CreatePackageResponse{Package: packageToProto(p)}), nil
}

// errBlobDone ends the chunk writer once WriteBlob has returned.
var errBlobDone = errors.New("rpc: blob writer finished")

type blobResult struct {
	size int64
	sum  [sha256.Size]byte
	err  error
}

// blobPipe writes one blob from chunks handed to it one at a time: the
// registry's WriteBlob runs in its own goroutine reading a pipe, so at most
// one chunk is held here at a time, and the blob is all or nothing as
// WriteBlob makes it. UploadPackage feeds one from a stream, and
// UploadPackageChunk from a series of calls.
type blobPipe struct {
	pw   *io.PipeWriter
	done chan blobResult
	res  *blobResult // once finished
}

// startBlob starts writing blob id, at most limit bytes; ctx bounds the
// write (when it ends, WriteBlob fails and leaves nothing).
func (s *packageServer) startBlob(ctx context.Context, id string, limit int64) *blobPipe {
	pr, pw := io.Pipe()
	b := &blobPipe{pw: pw, done: make(chan blobResult, 1)}
	go func() {
		var r blobResult
		r.size, r.sum, r.err = s.reg.WriteBlob(ctx, id, pr, limit)
		pr.CloseWithError(errBlobDone) // unblock a pending write
		b.done <- r
	}()
	return b
}

// write hands p to WriteBlob; an error means WriteBlob has returned, and
// finish says why.
func (b *blobPipe) write(p []byte) error {
	_, err := b.pw.Write(p)
	return err
}

// finish ends the blob: at its end when cause is nil (WriteBlob then
// stores it), or failing with cause (WriteBlob leaves nothing); it waits
// for WriteBlob's result. A second call returns the same result.
func (b *blobPipe) finish(cause error) blobResult {
	if b.res != nil {
		return *b.res
	}
	if cause != nil {
		b.pw.CloseWithError(cause)
	} else {
		b.pw.Close()
	}
	r := <-b.done
	b.res = &r
	return r
}

func (s *packageServer) UploadPackage(ctx context.Context, stream *connect.ClientStream[v1.UploadPackageRequest]) (*connect.Response[v1.UploadPackageResponse], error) {
	const op = "UploadPackage"
	if !stream.Receive() {
		if err := stream.Err(); err != nil {
			return nil, toConnect(s.log, op, err)
		}
		return nil, invalid("metadata", "the stream is empty; its first message must carry the metadata")
	}
	md := stream.Msg().GetMetadata()
	if md == nil {
		return nil, invalid("metadata", "the first message must carry the metadata")
	}
	p, err := uploadMeta(md).validate()
	if err != nil {
		return nil, err
	}
	limit := int64(MaxUploadBytes)
	if md.Size != nil {
		switch sz := md.GetSize(); {
		case sz <= 0:
			return nil, invalid("metadata.size", "%d, must be 1 .. %d", sz, int64(MaxUploadBytes))
		case sz > MaxUploadBytes:
			return nil, connect.NewError(connect.CodeResourceExhausted,
				fmt.Errorf("metadata.size: %d bytes, at most %d", sz, int64(MaxUploadBytes)))
		default:
			limit = sz
		}
	}
	var wantSum []byte
	if md.Sha256 != nil {
		h := md.GetSha256()
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != sha256.Size || h != strings.ToLower(h) {
			return nil, invalid("metadata.sha256", "not 64 lowercase hex digits")
		}
		wantSum = b
	}
	if err := s.prepare(ctx, op, &p); err != nil {
		return nil, err
	}

	bp := s.startBlob(ctx, p.ID, limit)
	var streamErr error
	for msgs := 1; stream.Receive(); msgs++ {
		chunk, ok := stream.Msg().GetPart().(*v1.UploadPackageRequest_Chunk)
		if !ok {
			streamErr = invalid("chunk", "message %d carries no chunk: only the first message carries metadata", msgs)
			break
		}
		if n := len(chunk.Chunk); n > MaxChunkBytes {
			streamErr = invalid("chunk", "%d bytes in one message, at most %d", n, MaxChunkBytes)
			break
		}
		if err := bp.write(chunk.Chunk); err != nil {
			break // WriteBlob has returned; its result says why
		}
	}
	if streamErr == nil {
		streamErr = stream.Err()
	}
	res := bp.finish(streamErr)

	fail := func(err error) (*connect.Response[v1.UploadPackageResponse], error) {
		s.dropBlob(op, p.ID)
		return nil, err
	}
	switch {
	case streamErr != nil && res.err != nil:
		// WriteBlob failed because of the stream; it left nothing behind.
		return nil, toConnect(s.log, op, streamErr)
	case streamErr != nil:
		return fail(toConnect(s.log, op, streamErr))
	case errors.Is(res.err, persistence.ErrTooLarge) && md.Size != nil:
		return nil, invalid("metadata.size", "the stream holds more than the declared %d bytes", md.GetSize())
	case errors.Is(res.err, persistence.ErrTooLarge):
		return nil, connect.NewError(connect.CodeResourceExhausted,
			fmt.Errorf("chunk: the file is larger than %d bytes", int64(MaxUploadBytes)))
	case res.err != nil:
		return nil, toConnect(s.log, op, res.err)
	}
	if md.Size != nil && res.size != md.GetSize() {
		return fail(invalid("metadata.size", "declared %d bytes, the stream held %d", md.GetSize(), res.size))
	}
	if res.size == 0 {
		return fail(invalid("chunk", "the file is empty"))
	}
	if wantSum != nil && !bytes.Equal(wantSum, res.sum[:]) {
		return fail(invalid("metadata.sha256", "declared %s, the stream's SHA-256 is %x", md.GetSha256(), res.sum))
	}
	p.Size, p.SHA256 = res.size, res.sum
	if err := s.store(ctx, op, p); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.UploadPackageResponse{Package: packageToProto(p)}), nil
}

func (s *packageServer) GetPackage(ctx context.Context, req *connect.Request[v1.GetPackageRequest]) (*connect.Response[v1.GetPackageResponse], error) {
	id := req.Msg.GetPackageId()
	if err := checkID("package_id", id); err != nil {
		return nil, err
	}
	p, err := s.reg.GetPackage(ctx, id)
	if err != nil {
		return nil, toConnect(s.log, "GetPackage", err)
	}
	return connect.NewResponse(&v1.GetPackageResponse{Package: packageToProto(p)}), nil
}

func (s *packageServer) ListPackages(ctx context.Context, req *connect.Request[v1.ListPackagesRequest]) (*connect.Response[v1.ListPackagesResponse], error) {
	if err := checkPageToken(req.Msg.GetPageToken()); err != nil {
		return nil, err
	}
	ps, next, err := listPage(ctx, req.Msg.GetPageSize(), req.Msg.GetPageToken(), s.reg.ListPackages, func(p persistence.Package) string { return p.ID })
	if err != nil {
		return nil, toConnect(s.log, "ListPackages", err)
	}
	out := &v1.ListPackagesResponse{NextPageToken: next, Packages: make([]*v1.Package, len(ps))}
	for i, p := range ps {
		out.Packages[i] = packageToProto(p)
	}
	return connect.NewResponse(out), nil
}

func (s *packageServer) DeletePackage(ctx context.Context, req *connect.Request[v1.DeletePackageRequest]) (*connect.Response[v1.DeletePackageResponse], error) {
	id := req.Msg.GetPackageId()
	if err := checkID("package_id", id); err != nil {
		return nil, err
	}
	// Running tasks download it: refuse while one has not finished.
	if task, st, err := s.packageInUse(ctx, id); err != nil {
		return nil, engineErr(s.log, "DeletePackage", err)
	} else if task != "" {
		return nil, connect.NewError(connect.CodeFailedPrecondition,
			fmt.Errorf("package_id: task %q (%v) installs package %q; stop the task or let it finish first", task, st, id))
	}
	if err := s.reg.DeletePackage(ctx, id); err != nil {
		return nil, toConnect(s.log, "DeletePackage", err)
	}
	s.dropBlob("DeletePackage", id)
	return connect.NewResponse(&v1.DeletePackageResponse{}), nil
}
