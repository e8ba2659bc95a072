package pebblestore_test

import (
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pebblestore"
	"github.com/otafleet/otafleet/persistence/persistencetest"
)

func TestContract(t *testing.T) {
	persistencetest.Run(t, func(t *testing.T) persistence.Store {
		s, err := pebblestore.Open("db", pebblestore.Options{FS: vfs.NewMem(), Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
