package download_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/transport/download"
)

// BenchmarkCheck: the token check of one served block (Server.Check) of
// 1,000 devices downloading at once, in turn, by handle (LwM2M) and by
// token (MQTT): with Config.KeepGrants, once each grant is kept (every
// block after a download's first), and without it (Authorize asked, a
// handle's record read from the store, on every block).
func BenchmarkCheck(b *testing.B) {
	const devices = 1000
	ctx := context.Background()
	store := memstore.New()
	if err := store.PutProduct(ctx, persistence.Product{ID: "p", Name: "p", Protocol: persistence.ProtocolLWM2M}); err != nil {
		b.Fatal(err)
	}
	for _, keep := range []bool{true, false} {
		srv, err := download.New(download.Config{
			Packages: store, Handles: store, Key: testKey("k1"), KeepGrants: keep,
			Authorize: func(context.Context, download.Grant) error { return nil },
		})
		if err != nil {
			b.Fatal(err)
		}
		handles, tokens := make([]string, devices), make([]string, devices)
		for i := range devices {
			g := download.Grant{TaskID: "t1", DeviceID: fmt.Sprintf("dev-%d", i), Attempt: 1, PackageID: "fw"}
			if handles[i], err = srv.Handle(ctx, g); err != nil {
				b.Fatal(err)
			}
			tokens[i], _ = srv.Mint(g)
		}
		name := "kept"
		if !keep {
			name = "asked"
		}
		for _, by := range []struct {
			name   string
			tokens []string
		}{{"handle", handles}, {"token", tokens}} {
			b.Run(by.name+"/"+name, func(b *testing.B) {
				for _, tok := range by.tokens { // the first blocks
					if _, err := srv.Check(ctx, tok, "fw"); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if _, err := srv.Check(ctx, by.tokens[i%devices], "fw"); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
		}
	}
}
