package rpc_test

import (
	"testing"

	"github.com/otafleet/otafleet/internal/pgtest"
)

// TestMain runs the package's tests with one private PostgreSQL server for
// the tests that run on the PostgreSQL store, started by the first of them
// (see pgtest); each opens a database of its own.
func TestMain(m *testing.M) { pgtest.Main(m) }
