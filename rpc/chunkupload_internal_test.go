package rpc

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// TestUploadPackageChunkOneCallAtATime: a call of an upload whose other
// call is running (holding the upload) is refused with aborted, not queued.
func TestUploadPackageChunkOneCallAtATime(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	if err := st.PutProduct(ctx, persistence.Product{ID: "p1", Name: "meter", Protocol: persistence.ProtocolMQTT}); err != nil {
		t.Fatal(err)
	}
	s := &packageServer{server: newServer(Deps{Registry: st, Token: "t"}), chunks: newChunkUploads()}
	t.Cleanup(s.closeUploads)
	md := &v1.UploadPackageMetadata{ProductId: "p1", PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE, Version: "1.0", FileName: "f.bin"}
	res, err := s.UploadPackageChunk(ctx, connect.NewRequest(&v1.UploadPackageChunkRequest{Metadata: md, TotalSize: 10, Data: []byte("abc")}))
	if err != nil {
		t.Fatal(err)
	}
	u := s.chunks.get(res.Msg.GetUploadId())
	u.mu.Lock() // as a running call holds it
	_, err = s.UploadPackageChunk(ctx, connect.NewRequest(&v1.UploadPackageChunkRequest{UploadId: u.id, Offset: 3, Data: []byte("def")}))
	if connect.CodeOf(err) != connect.CodeAborted || !strings.Contains(err.Error(), "one call at a time") {
		t.Fatalf("second call while one runs: %v, want aborted", err)
	}
	u.mu.Unlock()
	if res, err := s.UploadPackageChunk(ctx, connect.NewRequest(&v1.UploadPackageChunkRequest{UploadId: u.id, Offset: 3, Data: []byte("def")})); err != nil || res.Msg.GetNextOffset() != 6 {
		t.Fatalf("after the first call ended: %v %v", res, err)
	}
}
