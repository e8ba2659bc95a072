package actors_test

import (
	"bytes"
	"context"
	"log/slog"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/otafleet/otafleet/internal/etcdtest"
	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/persistence/pebblestore"
	"github.com/otafleet/otafleet/persistence/pgstore"
)

// TestMain runs the package's tests with one private PostgreSQL server
// for the store-parameterised engine tests (see pgtest), started by the
// first of them; each opens a database of its own; and one private etcd
// for the cluster tests (see etcdtest), started by the first of them.
func TestMain(m *testing.M) {
	os.Exit(pgtest.Wrap(func() int { return etcdtest.Wrap(m.Run) }))
}

// journal is a store the store-parameterised engine tests run the same
// bodies on (see engineStores): open opens it as it is now (empty the
// first time); crash takes at once the image that a crash of the machine
// (crashable) or of the process leaves, which open finds from then on,
// while the store opened before is the dead process's.
type journal interface {
	open(t *testing.T) persistence.EventStore
	crash(rng *rand.Rand)
}

// engineStore is one kind of store for the store-parameterised engine
// tests (issue 22): the same test bodies run on each.
type engineStore struct {
	name string
	// journals prepares the store's journals for test t (say, starts a
	// server) and returns new, which returns a fresh, empty journal.
	journals func(t *testing.T) (new func() journal)
	// crashStep is how far apart (in journal writes) the crash tests crash
	// the campaign on this store, 1 for every write. PostgreSQL's synced
	// commits wait for a real fsync, and a crash of the server and its
	// recovery take seconds: crashing at every seventh (eighteenth) write
	// keeps the package's run within CI's budget.
	crashStep int
	// crashOnly: only the crash tests run on it (they name it).
	crashOnly bool
}

// engineStores are the stores of the store-parameterised engine tests:
// memstore, Pebble on an in-memory filesystem (crash tests: the machine
// crashes, at every write), PostgreSQL (a database of its own per journal
// on the package's private server; crash tests: the process dies, the
// database keeps every commit), and postgres-crash, only for crash tests:
// PostgreSQL crashed with the process (pg_ctl -m immediate stop, which
// loses the commits whose WAL was not yet written, the unsynced ones), on a
// server of the test's own.
var engineStores = []engineStore{
	{name: "memstore", journals: func(*testing.T) func() journal {
		return func() journal { return &memJournal{s: memstore.New()} }
	}, crashStep: 1},
	{name: "pebble", journals: func(*testing.T) func() journal {
		return func() journal { return &pebbleJournal{mem: vfs.NewCrashableMem()} }
	}, crashStep: 1},
	{name: "postgres", journals: func(t *testing.T) func() journal {
		srv := pgtest.Shared(t)
		return func() journal { return newPGJournal(t, srv, false) }
	}, crashStep: 7},
	{name: "postgres-crash", journals: func(t *testing.T) func() journal {
		if os.Getenv(pgtest.EnvDSN) != "" {
			t.Skip("crashing PostgreSQL needs the private server: it cannot crash one given by " + pgtest.EnvDSN)
		}
		// A server of its own: the package's other tests are undisturbed
		// and the recovery after each crash replays only this test's writes.
		srv, err := pgtest.Start()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := srv.Stop(); err != nil {
				t.Error(err)
			}
		})
		return func() journal { return newPGJournal(t, srv, true) }
	}, crashStep: 18, crashOnly: true},
}

// storeNamed returns the engineStore called name.
func storeNamed(name string) engineStore {
	for _, s := range engineStores {
		if s.name == name {
			return s
		}
	}
	panic("no engine store " + name)
}

// forEachStore runs f as a subtest per store of names (when none is
// named, every store of engineStores but the crash tests' own).
func forEachStore(t *testing.T, f func(t *testing.T, s engineStore), names ...string) {
	t.Helper()
	var stores []engineStore
	for _, s := range engineStores {
		if !s.crashOnly {
			stores = append(stores, s)
		}
	}
	if len(names) > 0 {
		stores = nil
		for _, n := range names {
			stores = append(stores, storeNamed(n))
		}
	}
	for _, s := range stores {
		t.Run(s.name, func(t *testing.T) { f(t, s) })
	}
}

// openFresh opens a fresh journal of s for t; restart closes the store
// and opens the same journal again, as a process restarted after SIGKILL
// finds it (memstore: the same store). The stores are closed at the end
// of t.
func (s engineStore) openFresh(t *testing.T) (st persistence.EventStore, restart func(persistence.EventStore) persistence.EventStore) {
	t.Helper()
	j := s.journals(t)()
	return j.open(t), func(old persistence.EventStore) persistence.EventStore {
		t.Helper()
		if _, ok := j.(*memJournal); !ok {
			if err := old.Close(); err != nil {
				t.Fatal(err)
			}
		}
		return j.open(t)
	}
}

// memJournal is memstore: open returns the one store, and a crash loses
// nothing (memstore lives as long as the test's process).
type memJournal struct{ s *memstore.Store }

func (j *memJournal) open(*testing.T) persistence.EventStore { return j.s }
func (j *memJournal) crash(*rand.Rand)                       {}

// pebbleJournal is Pebble on a crashable in-memory filesystem: a crash
// keeps what was synced and a random share of the rest.
type pebbleJournal struct{ mem *vfs.MemFS }

func (j *pebbleJournal) open(t *testing.T) persistence.EventStore {
	t.Helper()
	st, err := pebblestore.Open("db", pebblestore.Options{FS: j.mem})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func (j *pebbleJournal) crash(rng *rand.Rand) {
	j.mem = j.mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(60), RNG: rng})
}

// pgJournal is a database of its own on a PostgreSQL server. A crash is
// the process's: PostgreSQL keeps every commit, the unsynced ones
// (synchronous_commit off) included; with crashServer PostgreSQL crashes
// too (pg_ctl -m immediate stop, then starts again), losing the commits
// whose WAL it had not yet written.
type pgJournal struct {
	t           *testing.T
	srv         *pgtest.Server
	dsn         string
	crashServer bool
}

// pgSealKey is the seal key of the tests' PostgreSQL stores.
var pgSealKey = bytes.Repeat([]byte{7}, persistence.SealKeyLen)

// newPGJournal creates a fresh database of the current schema on srv.
func newPGJournal(t *testing.T, srv *pgtest.Server, crashServer bool) journal {
	t.Helper()
	dsn := srv.NewDatabaseFrom(t, "migrated", func(dsn string) error {
		ctx := context.Background()
		pool, err := pgxpool.New(ctx, dsn)
		if err != nil {
			return err
		}
		defer pool.Close()
		_, err = pgstore.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
		return err
	})
	return &pgJournal{t: t, srv: srv, dsn: dsn, crashServer: crashServer}
}

func (j *pgJournal) open(t *testing.T) persistence.EventStore {
	t.Helper()
	st, err := pgstore.Open(context.Background(), j.dsn, pgstore.Options{SealKey: pgSealKey, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func (j *pgJournal) crash(*rand.Rand) {
	if !j.crashServer {
		return
	}
	if err := j.srv.Crash(); err != nil {
		j.t.Error(err)
		return
	}
	if err := j.srv.Restart(); err != nil {
		j.t.Error(err)
	}
}
