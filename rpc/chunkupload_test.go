package rpc_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/persistence/pgstore"
	"github.com/otafleet/otafleet/rpc"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// chunkStores are the registries the chunked upload runs on: the
// in-memory one and PostgreSQL (whose blob write stays open across the
// upload's calls).
var chunkStores = []struct {
	name string
	open func(t *testing.T) (persistence.Registry, *blobLog)
}{
	{"memstore", func(t *testing.T) (persistence.Registry, *blobLog) {
		st := &blobLog{Store: memstore.New()}
		return st, st
	}},
	{"postgres", func(t *testing.T) (persistence.Registry, *blobLog) {
		st, err := pgstore.Open(context.Background(), pgtest.NewDatabase(t),
			pgstore.Options{SealKey: bytes.Repeat([]byte{7}, persistence.SealKeyLen), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return st, nil
	}},
}

func chunkEnv(t *testing.T, reg persistence.Registry, bl *blobLog) (*env, *clocktest.Clock) {
	t.Helper()
	clk := clocktest.New(time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC))
	done := make(chan struct{})
	e := serve(t, bl, rpc.Deps{Registry: reg, Token: testToken, Clock: clk, Done: done})
	// Before the store closes (cleanups run last first), as serve does.
	t.Cleanup(func() { close(done) })
	return e, clk
}

func fileOf(n int) ([]byte, string) {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13 + i>>11)
	}
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

// chunk is one UploadPackageChunk call.
func (e *env) chunk(r *v1.UploadPackageChunkRequest) (*v1.UploadPackageChunkResponse, error) {
	res, err := e.packages.UploadPackageChunk(context.Background(), connect.NewRequest(r))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

func TestUploadPackageChunk(t *testing.T) {
	for _, sk := range chunkStores {
		t.Run(sk.name, func(t *testing.T) {
			reg, bl := sk.open(t)
			e, clk := chunkEnv(t, reg, bl)
			ctx := context.Background()
			pid := e.mustProduct(t, v1.Protocol_PROTOCOL_MQTT, false)
			md := &v1.UploadPackageMetadata{ProductId: pid, PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE, Version: "4.0", FileName: "fw.bin"}
			content, sum := fileOf(2<<20 + 4321)
			total := int64(len(content))
			const step = rpc.MaxUploadChunkBytes

			// The first call: metadata, total size, the first MiB.
			r, err := e.chunk(&v1.UploadPackageChunkRequest{Metadata: md, TotalSize: total, Data: content[:step]})
			if err != nil {
				t.Fatal(err)
			}
			id := r.GetUploadId()
			if r.GetNextOffset() != step || r.GetPackage() != nil || id == "" {
				t.Fatalf("first call answered %v", r)
			}
			// A wrong offset (a resent chunk whose answer was lost) names
			// the expected one; the upload goes on from there.
			_, err = e.chunk(&v1.UploadPackageChunkRequest{UploadId: id, Offset: 0, Data: content[:step]})
			wantMessage(t, err, connect.CodeFailedPrecondition, "offset: 0, expected 1048576")
			_, err = e.chunk(&v1.UploadPackageChunkRequest{UploadId: id, Offset: step + 5, Data: content[step+5 : step+10]})
			wantMessage(t, err, connect.CodeFailedPrecondition, "expected 1048576")
			// A call without data says where the upload stands.
			if r, err := e.chunk(&v1.UploadPackageChunkRequest{UploadId: id}); err != nil || r.GetNextOffset() != step {
				t.Fatalf("probe: %v %v", r, err)
			}
			// Bounded chunks; data past the total; metadata only first.
			_, err = e.chunk(&v1.UploadPackageChunkRequest{UploadId: id, Offset: step, Data: make([]byte, step+1)})
			wantMessage(t, err, connect.CodeInvalidArgument, "at most 1048576")
			_, err = e.chunk(&v1.UploadPackageChunkRequest{UploadId: id, Metadata: md, Offset: step, Data: content[step : 2*step]})
			wantCode(t, err, connect.CodeInvalidArgument)
			if r, err = e.chunk(&v1.UploadPackageChunkRequest{UploadId: id, Offset: step, Data: content[step : 2*step]}); err != nil || r.GetNextOffset() != 2*step {
				t.Fatalf("second chunk: %v %v", r, err)
			}
			_, err = e.chunk(&v1.UploadPackageChunkRequest{UploadId: id, Offset: 2 * step, Data: append(bytes.Clone(content[2*step:]), 0), Sha256: sum})
			wantMessage(t, err, connect.CodeInvalidArgument, "past total_size")
			// The last chunk needs the digest.
			_, err = e.chunk(&v1.UploadPackageChunkRequest{UploadId: id, Offset: 2 * step, Data: content[2*step:]})
			wantMessage(t, err, connect.CodeInvalidArgument, "sha256: required")
			r, err = e.chunk(&v1.UploadPackageChunkRequest{UploadId: id, Offset: 2 * step, Data: content[2*step:], Sha256: sum})
			if err != nil {
				t.Fatal(err)
			}
			p := r.GetPackage()
			if p.GetSize() != total || p.GetSha256() != sum || p.GetVersion() != "4.0" || r.GetNextOffset() != total {
				t.Fatalf("last chunk answered %v", r)
			}
			blob, err := reg.OpenBlob(ctx, p.GetPackageId())
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(io.NewSectionReader(blob, 0, blob.Size()))
			blob.Close()
			if err != nil || !bytes.Equal(got, content) {
				t.Fatalf("stored blob differs (%d bytes, %v)", len(got), err)
			}
			// The upload is over.
			_, err = e.chunk(&v1.UploadPackageChunkRequest{UploadId: id})
			wantCode(t, err, connect.CodeNotFound)

			// A wrong digest deletes what was received.
			small, _ := fileOf(1000)
			r, err = e.chunk(&v1.UploadPackageChunkRequest{Metadata: md, TotalSize: 1000, Data: small[:600]})
			if err != nil {
				t.Fatal(err)
			}
			_, err = e.chunk(&v1.UploadPackageChunkRequest{UploadId: r.GetUploadId(), Offset: 600, Data: small[600:], Sha256: strings.Repeat("0", 64)})
			wantMessage(t, err, connect.CodeInvalidArgument, "the upload is deleted")
			_, err = e.chunk(&v1.UploadPackageChunkRequest{UploadId: r.GetUploadId()})
			wantCode(t, err, connect.CodeNotFound)

			// An upload left alone for an hour is abandoned.
			r, err = e.chunk(&v1.UploadPackageChunkRequest{Metadata: md, TotalSize: 1000, Data: small[:10]})
			if err != nil {
				t.Fatal(err)
			}
			clk.Advance(rpc.ChunkUploadIdle - time.Minute)
			if _, err := e.chunk(&v1.UploadPackageChunkRequest{UploadId: r.GetUploadId(), Offset: 10, Data: small[10:20]}); err != nil {
				t.Fatalf("a call within the hour: %v", err)
			}
			clk.Advance(rpc.ChunkUploadIdle - time.Minute) // an hour after the first call, not after the last
			if _, err := e.chunk(&v1.UploadPackageChunkRequest{UploadId: r.GetUploadId()}); err != nil {
				t.Fatalf("abandoned too early: %v", err)
			}
			clk.Advance(rpc.ChunkUploadIdle)
			_, err = e.chunk(&v1.UploadPackageChunkRequest{UploadId: r.GetUploadId(), Offset: 20, Data: small[20:30]})
			wantMessage(t, err, connect.CodeNotFound, "start again")

			// Only the complete package remains, with its blob.
			ps, err := reg.ListPackages(ctx, "", 10)
			if err != nil || len(ps) != 1 {
				t.Fatalf("store has %d packages (%v), want 1", len(ps), err)
			}
			if bl != nil {
				bl.checkBlobs(t)
			}
			// An upload left open when the server shuts down (Deps.Done)
			// is abandoned: PostgreSQL's Close, which waits for blob writes
			// in progress, does not wait for it.
			if _, err := e.chunk(&v1.UploadPackageChunkRequest{Metadata: md, TotalSize: 1000, Data: small[:10]}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestUploadPackageChunkInvalid(t *testing.T) {
	e := newEnv(t)
	pid := e.mustProduct(t, v1.Protocol_PROTOCOL_MQTT, false)
	md := func() *v1.UploadPackageMetadata {
		return &v1.UploadPackageMetadata{ProductId: pid, PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE, Version: "4.0", FileName: "fw.bin"}
	}
	size := int64(99)
	bad := md()
	bad.Version = ""
	for _, tc := range []struct {
		name string
		req  *v1.UploadPackageChunkRequest
		code connect.Code
		says string
	}{
		{"no metadata", &v1.UploadPackageChunkRequest{TotalSize: 10, Data: []byte("x")}, connect.CodeInvalidArgument, "metadata: required"},
		{"no total", &v1.UploadPackageChunkRequest{Metadata: md(), Data: []byte("x")}, connect.CodeInvalidArgument, "total_size"},
		{"too big", &v1.UploadPackageChunkRequest{Metadata: md(), TotalSize: rpc.MaxUploadBytes + 1}, connect.CodeResourceExhausted, "at most"},
		{"first offset", &v1.UploadPackageChunkRequest{Metadata: md(), TotalSize: 10, Offset: 3, Data: []byte("x")}, connect.CodeInvalidArgument, "must be 0"},
		{"size disagrees", &v1.UploadPackageChunkRequest{Metadata: &v1.UploadPackageMetadata{ProductId: pid, PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE, Version: "4.0", FileName: "fw.bin", Size: &size}, TotalSize: 10}, connect.CodeInvalidArgument, "metadata.size"},
		{"bad version", &v1.UploadPackageChunkRequest{Metadata: bad, TotalSize: 10}, connect.CodeInvalidArgument, "version"},
		{"bad sha256", &v1.UploadPackageChunkRequest{Metadata: md(), TotalSize: 1, Data: []byte("x"), Sha256: "ABC"}, connect.CodeInvalidArgument, "sha256"},
		{"whole file without sha256", &v1.UploadPackageChunkRequest{Metadata: md(), TotalSize: 1, Data: []byte("x")}, connect.CodeInvalidArgument, "sha256: required"},
		{"first data past total", &v1.UploadPackageChunkRequest{Metadata: md(), TotalSize: 1, Data: []byte("xy")}, connect.CodeInvalidArgument, "past total_size"},
		{"unknown upload", &v1.UploadPackageChunkRequest{UploadId: "0123456789abcdef01234567", Data: []byte("x")}, connect.CodeNotFound, "not found"},
		{"unknown product", &v1.UploadPackageChunkRequest{Metadata: &v1.UploadPackageMetadata{ProductId: "ghost", PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE, Version: "4.0", FileName: "fw.bin"}, TotalSize: 10}, connect.CodeNotFound, "product"},
	} {
		_, err := e.chunk(tc.req)
		if connect.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: got %v, want %v saying %q", tc.name, err, tc.code, tc.says)
		}
	}
	// At most MaxChunkUploads at once; the refused first calls above left
	// none behind, so all of them can start.
	for i := range rpc.MaxChunkUploads {
		if _, err := e.chunk(&v1.UploadPackageChunkRequest{Metadata: md(), TotalSize: 10}); err != nil {
			t.Fatalf("upload %d: %v", i, err)
		}
	}
	_, err := e.chunk(&v1.UploadPackageChunkRequest{Metadata: md(), TotalSize: 10})
	wantMessage(t, err, connect.CodeResourceExhausted, "in progress")
}
