package pgstore_test

import (
	"testing"

	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/persistencetest"
)

func TestContract(t *testing.T) {
	persistencetest.Run(t, func(t *testing.T) persistence.Store {
		s, _ := openStore(t)
		return s
	})
}
