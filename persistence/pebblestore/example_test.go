package pebblestore_test

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pebblestore"
)

// A crash test: write on a crashable in-memory filesystem, take the image a
// crash would leave, and reopen the store on it.
func Example_crash() {
	ctx := context.Background()
	fs := vfs.NewCrashableMem()
	s, err := pebblestore.Open("db", pebblestore.Options{FS: fs})
	if err != nil {
		panic(err)
	}
	st := persistence.Stream{Kind: persistence.KindDevice, ID: "dev-1"}
	if _, err := s.Append(ctx, persistence.Append{Stream: st, Events: []persistence.Event{{Type: persistence.EventTypeDevice, Payload: []byte("hello")}}}); err != nil {
		panic(err)
	}
	// Only what was synced is sure to survive; UnsyncedDataPercent keeps a
	// random part of the rest.
	img := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rand.New(rand.NewPCG(1, 2))})
	_ = s.Close()

	s, err = pebblestore.Open("db", pebblestore.Options{FS: img})
	if err != nil {
		panic(err)
	}
	defer s.Close()
	_ = s.Load(ctx, st, 0, func(e persistence.Event) error {
		fmt.Printf("%d %s\n", e.Seq, e.Payload)
		return nil
	})
	// Output: 1 hello
}
