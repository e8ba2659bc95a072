package memstore_test

import (
	"testing"

	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/persistence/persistencetest"
)

func TestContract(t *testing.T) {
	persistencetest.Run(t, func(*testing.T) persistence.Store { return memstore.New() })
}
