package download_test

import (
	"bytes"
	"context"
	"log/slog"
	"testing"

	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pebblestore"
	"github.com/otafleet/otafleet/transport/download"
)

// BenchmarkServeBlock: the package read of one 1 KiB CoAP block of a
// 200 KiB package in a Pebble store (the blocks of one download in turn),
// from an image (Images.Open, Content.Slice) and from the store per block
// as before issue 21 (OpenPackage, ReadAt).
func BenchmarkServeBlock(b *testing.B) {
	const size, block = 200 << 10, 1024
	ctx := context.Background()
	st, err := pebblestore.Open(b.TempDir(), pebblestore.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Close() })
	content := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	n, sum, err := st.WriteBlob(ctx, "fw", bytes.NewReader(content), size)
	if err != nil {
		b.Fatal(err)
	}
	if err := st.PutProduct(ctx, persistence.Product{ID: "p", Name: "p", Protocol: persistence.ProtocolLWM2M}); err != nil {
		b.Fatal(err)
	}
	if err := st.PutPackage(ctx, persistence.Package{ID: "fw", ProductID: "p", Type: persistence.PackageFirmware, Version: "2", Size: n, SHA256: sum}); err != nil {
		b.Fatal(err)
	}
	b.Run("image", func(b *testing.B) {
		images := download.NewImages(st, download.DefaultImageBytes)
		b.ReportAllocs()
		i := int64(0)
		for b.Loop() {
			c, err := images.Open(ctx, "fw")
			if err != nil {
				b.Fatal(err)
			}
			off := i % (size / block) * block
			if _, err := c.Slice(off, block); err != nil {
				b.Fatal(err)
			}
			_ = c.Close()
			i++
		}
	})
	b.Run("store", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, block)
		i := int64(0)
		for b.Loop() {
			blob, _, err := download.OpenPackage(ctx, st, "fw")
			if err != nil {
				b.Fatal(err)
			}
			off := i % (size / block) * block
			if _, err := blob.ReadAt(buf, off); err != nil {
				b.Fatal(err)
			}
			_ = blob.Close()
			i++
		}
	})
}
