package rpc_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"strings"
	"testing"

	"connectrpc.com/connect"

	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

func TestPackages(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	pid := e.mustProduct(t, v1.Protocol_PROTOCOL_MQTT, false)
	content := []byte("firmware image v2")
	desc := "second release"
	res, err := e.packages.CreatePackage(ctx, connect.NewRequest(&v1.CreatePackageRequest{
		ProductId: pid, PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE, Version: "2.0.1-rc_1",
		SourceVersions: []string{"1.0", "1.1"}, FileName: "fw-2.0.1.bin", Content: content, Description: &desc,
	}))
	if err != nil {
		t.Fatal(err)
	}
	p := res.Msg.GetPackage()
	sum := sha256.Sum256(content)
	if len(p.GetPackageId()) != 24 || p.GetSize() != int64(len(content)) || p.GetSha256() != hex.EncodeToString(sum[:]) ||
		p.GetVersion() != "2.0.1-rc_1" || len(p.GetSourceVersions()) != 2 || p.GetDescription() != desc ||
		p.GetPackageType() != v1.PackageType_PACKAGE_TYPE_FIRMWARE {
		t.Fatalf("created %v", p)
	}
	blob, err := e.store.OpenBlob(ctx, p.GetPackageId())
	if err != nil {
		t.Fatal(err)
	}
	stored, _ := io.ReadAll(blob)
	blob.Close()
	if !bytes.Equal(stored, content) {
		t.Errorf("blob %q", stored)
	}
	got, err := e.packages.GetPackage(ctx, connect.NewRequest(&v1.GetPackageRequest{PackageId: p.GetPackageId()}))
	if err != nil || got.Msg.GetPackage().GetSha256() != p.GetSha256() {
		t.Fatalf("GetPackage: %v %v", got, err)
	}
	l, err := e.packages.ListPackages(ctx, connect.NewRequest(&v1.ListPackagesRequest{PageSize: 1}))
	if err != nil || len(l.Msg.GetPackages()) != 1 || l.Msg.GetNextPageToken() != "" {
		t.Fatalf("ListPackages: %v %v", l, err)
	}
	if _, err := e.packages.DeletePackage(ctx, connect.NewRequest(&v1.DeletePackageRequest{PackageId: p.GetPackageId()})); err != nil {
		t.Fatal(err)
	}
	_, err = e.packages.GetPackage(ctx, connect.NewRequest(&v1.GetPackageRequest{PackageId: p.GetPackageId()}))
	wantCode(t, err, connect.CodeNotFound)
	if _, err := e.store.OpenBlob(ctx, p.GetPackageId()); err == nil {
		t.Error("blob survived DeletePackage")
	}
	_, err = e.packages.DeletePackage(ctx, connect.NewRequest(&v1.DeletePackageRequest{PackageId: p.GetPackageId()}))
	wantCode(t, err, connect.CodeNotFound)
	e.store.checkBlobs(t)
}

func TestCreatePackageInvalid(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	mqtt := e.mustProduct(t, v1.Protocol_PROTOCOL_MQTT, false)
	pcp := e.mustProduct(t, v1.Protocol_PROTOCOL_LWM2M, true)
	ok := func() *v1.CreatePackageRequest {
		return &v1.CreatePackageRequest{ProductId: mqtt, PackageType: v1.PackageType_PACKAGE_TYPE_SOFTWARE,
			Version: "1.0", FileName: "a.bin", Content: []byte{1}}
	}
	longDesc := strings.Repeat("x", 1025)
	for _, tc := range []struct {
		name  string
		edit  func(*v1.CreatePackageRequest)
		code  connect.Code
		field string
	}{
		{"unknown product", func(r *v1.CreatePackageRequest) { r.ProductId = "nope" }, connect.CodeNotFound, "product_id"},
		{"no type", func(r *v1.CreatePackageRequest) { r.PackageType = 0 }, connect.CodeInvalidArgument, "package_type"},
		{"unknown type", func(r *v1.CreatePackageRequest) { r.PackageType = 9 }, connect.CodeInvalidArgument, "package_type"},
		{"no version", func(r *v1.CreatePackageRequest) { r.Version = "" }, connect.CodeInvalidArgument, "version"},
		{"bad version", func(r *v1.CreatePackageRequest) { r.Version = "1.0 beta" }, connect.CodeInvalidArgument, "version"},
		{"long version", func(r *v1.CreatePackageRequest) { r.Version = strings.Repeat("1", 257) }, connect.CodeInvalidArgument, "version"},
		{"pcp version", func(r *v1.CreatePackageRequest) { r.ProductId = pcp; r.Version = strings.Repeat("1", 17) }, connect.CodeInvalidArgument, "version"},
		{"bad source", func(r *v1.CreatePackageRequest) { r.SourceVersions = []string{"1", "v/2"} }, connect.CodeInvalidArgument, "source_versions[1]"},
		{"21 sources", func(r *v1.CreatePackageRequest) { r.SourceVersions = make([]string, 21) }, connect.CodeInvalidArgument, "source_versions"},
		{"no file name", func(r *v1.CreatePackageRequest) { r.FileName = "" }, connect.CodeInvalidArgument, "file_name"},
		{"slash", func(r *v1.CreatePackageRequest) { r.FileName = "a/b.bin" }, connect.CodeInvalidArgument, "file_name"},
		{"backslash", func(r *v1.CreatePackageRequest) { r.FileName = `a\b.bin` }, connect.CodeInvalidArgument, "file_name"},
		{"cjk", func(r *v1.CreatePackageRequest) { r.FileName = "固件.bin" }, connect.CodeInvalidArgument, "file_name"},
		{"long desc", func(r *v1.CreatePackageRequest) { r.Description = &longDesc }, connect.CodeInvalidArgument, "description"},
		{"empty", func(r *v1.CreatePackageRequest) { r.Content = nil }, connect.CodeInvalidArgument, "content"},
		{"8 MiB + 1", func(r *v1.CreatePackageRequest) { r.Content = make([]byte, 8<<20+1) }, connect.CodeInvalidArgument, "content"},
		{"9 MiB body", func(r *v1.CreatePackageRequest) { r.Content = make([]byte, 9<<20) }, connect.CodeResourceExhausted, ""},
	} {
		req := ok()
		tc.edit(req)
		_, err := e.packages.CreatePackage(ctx, connect.NewRequest(req))
		if connect.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: got %v, want %v naming %s", tc.name, err, tc.code, tc.field)
		}
	}
	if ps, _ := e.store.ListPackages(ctx, "", 10); len(ps) != 0 {
		t.Errorf("store has %d packages", len(ps))
	}
	e.store.checkBlobs(t)
	// 16 bytes is fine for PCP, and 8 MiB exactly inline.
	req := ok()
	req.ProductId, req.Version, req.Content = pcp, strings.Repeat("1", 16), make([]byte, 8<<20)
	if _, err := e.packages.CreatePackage(ctx, connect.NewRequest(req)); err != nil {
		t.Fatal(err)
	}
}

// upload streams content in chunks of chunkSize after md.
func upload(e *env, md *v1.UploadPackageMetadata, content []byte, chunkSize int) (*v1.Package, error) {
	st := e.packages.UploadPackage(context.Background())
	if err := st.Send(&v1.UploadPackageRequest{Part: &v1.UploadPackageRequest_Metadata{Metadata: md}}); err != nil {
		_, err = st.CloseAndReceive()
		return nil, err
	}
	for len(content) > 0 {
		n := min(chunkSize, len(content))
		if err := st.Send(&v1.UploadPackageRequest{Part: &v1.UploadPackageRequest_Chunk{Chunk: content[:n]}}); err != nil {
			break // the server answered early; CloseAndReceive has its error
		}
		content = content[n:]
	}
	res, err := st.CloseAndReceive()
	if err != nil {
		return nil, err
	}
	return res.Msg.GetPackage(), nil
}

func TestUploadPackage(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	pid := e.mustProduct(t, v1.Protocol_PROTOCOL_MQTT, false)
	content := make([]byte, 5<<20+12345)
	for i := range content {
		content[i] = byte(i * 7)
	}
	sum := sha256.Sum256(content)
	hexSum := hex.EncodeToString(sum[:])
	size := int64(len(content))
	md := func() *v1.UploadPackageMetadata {
		return &v1.UploadPackageMetadata{ProductId: pid, PackageType: v1.PackageType_PACKAGE_TYPE_FIRMWARE,
			Version: "3.0", FileName: "big.bin", Size: &size, Sha256: &hexSum}
	}
	p, err := upload(e, md(), content, 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	if p.GetSize() != size || p.GetSha256() != hexSum || p.GetFileName() != "big.bin" {
		t.Fatalf("uploaded %v", p)
	}
	blob, err := e.store.OpenBlob(ctx, p.GetPackageId())
	if err != nil {
		t.Fatal(err)
	}
	if blob.Size() != size || blob.SHA256() != sum {
		t.Errorf("blob size %d", blob.Size())
	}
	blob.Close()

	// Without declared size and digest.
	m := md()
	m.Size, m.Sha256 = nil, nil
	if p, err := upload(e, m, content[:1000], 333); err != nil || p.GetSize() != 1000 {
		t.Fatalf("undeclared: %v %v", p, err)
	}

	wrong := strings.Repeat("0", 64)
	shorter := size - 1
	for _, tc := range []struct {
		name string
		edit func(*v1.UploadPackageMetadata)
		data []byte
		code connect.Code
	}{
		{"wrong sha256", func(m *v1.UploadPackageMetadata) { m.Sha256 = &wrong }, content, connect.CodeInvalidArgument},
		{"longer than size", func(m *v1.UploadPackageMetadata) { m.Size = &shorter }, content, connect.CodeInvalidArgument},
		{"shorter than size", func(m *v1.UploadPackageMetadata) { m.Sha256 = nil }, content[:100], connect.CodeInvalidArgument},
		{"empty file", func(m *v1.UploadPackageMetadata) { m.Size, m.Sha256 = nil, nil }, nil, connect.CodeInvalidArgument},
		{"bad version", func(m *v1.UploadPackageMetadata) { m.Version = "" }, content[:10], connect.CodeInvalidArgument},
		{"unknown type", func(m *v1.UploadPackageMetadata) { m.PackageType = 5 }, content[:10], connect.CodeInvalidArgument},
		{"unknown product", func(m *v1.UploadPackageMetadata) { m.ProductId = "ghost" }, content[:10], connect.CodeNotFound},
	} {
		m := md()
		tc.edit(m)
		_, err := upload(e, m, tc.data, 1<<20)
		if connect.CodeOf(err) != tc.code {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.code)
		}
	}
	tooBig := int64(1<<30 + 1)
	m = md()
	m.Size = &tooBig
	_, err = upload(e, m, content[:10], 10)
	wantCode(t, err, connect.CodeResourceExhausted)

	// A stream without metadata first.
	st := e.packages.UploadPackage(ctx)
	_ = st.Send(&v1.UploadPackageRequest{Part: &v1.UploadPackageRequest_Chunk{Chunk: []byte("x")}})
	_, err = st.CloseAndReceive()
	wantCode(t, err, connect.CodeInvalidArgument)
	// Metadata twice.
	st = e.packages.UploadPackage(ctx)
	_ = st.Send(&v1.UploadPackageRequest{Part: &v1.UploadPackageRequest_Metadata{Metadata: md()}})
	_ = st.Send(&v1.UploadPackageRequest{Part: &v1.UploadPackageRequest_Metadata{Metadata: md()}})
	_, err = st.CloseAndReceive()
	wantCode(t, err, connect.CodeInvalidArgument)

	// Only the two good uploads remain, with their blobs.
	ps, _ := e.store.ListPackages(ctx, "", 10)
	if len(ps) != 2 {
		t.Fatalf("store has %d packages, want 2", len(ps))
	}
	e.store.checkBlobs(t)
}
