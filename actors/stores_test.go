package actors_test

import (
	"bytes"
	"context"
	"log/slog"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/persistence/pebblestore"
	"github.com/otafleet/otafleet/persistence/pgstore"
)

// TestMain runs the package's tests with one private PostgreSQL server
// for the store-parameterised engine tests (see pgtest), started by the
// first of them; each opens a database of its own.
func TestMain(m *testing.M) { pgtest.Main(m) }

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
	// new returns a fresh, empty journal for t.
	new func(t *testing.T) journal
	// crashStep is how far apart (in journal writes) the crash tests crash
	// the campaign on this store, 1 for every write. PostgreSQL's synced
	// commits wait for a real fsync: crashing at every fifth write keeps
	// the package's run within CI's budget.
	crashStep int
	// machineCrash: crash loses what a crash of the machine loses (the
	// unsynced writes, some of them); otherwise, as a process killed with
	// SIGKILL, it loses nothing the store accepted.
	machineCrash bool
}

// engineStores are the stores of the store-parameterised engine tests:
// memstore, Pebble on an in-memory filesystem (crash tests: crashable, at
// every write), and PostgreSQL (a database of its own per test on the
// package's private server; crash tests: the process dies, the database
// keeps every commit).
var engineStores = []engineStore{
	{name: "memstore", new: func(*testing.T) journal { return &memJournal{s: memstore.New()} }, crashStep: 1},
	{name: "pebble", new: func(*testing.T) journal { return &pebbleJournal{mem: vfs.NewCrashableMem()} }, crashStep: 1, machineCrash: true},
	{name: "postgres", new: newPGJournal, crashStep: 5},
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

// forEachStore runs f as a subtest per store of names (all of
// engineStores when none is named).
func forEachStore(t *testing.T, f func(t *testing.T, s engineStore), names ...string) {
	t.Helper()
	stores := engineStores
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
	j := s.new(t)
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

// pgJournal is a database of its own on the package's PostgreSQL server.
// A crash is the process's: PostgreSQL keeps every commit, the unsynced
// ones (synchronous_commit off) included.
type pgJournal struct{ dsn string }

// pgSealKey is the seal key of the tests' PostgreSQL stores.
var pgSealKey = bytes.Repeat([]byte{7}, persistence.SealKeyLen)

func newPGJournal(t *testing.T) journal {
	t.Helper()
	dsn := pgtest.Shared(t).NewDatabaseFrom(t, "migrated", func(dsn string) error {
		ctx := context.Background()
		pool, err := pgxpool.New(ctx, dsn)
		if err != nil {
			return err
		}
		defer pool.Close()
		_, err = pgstore.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
		return err
	})
	return &pgJournal{dsn: dsn}
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

func (j *pgJournal) crash(*rand.Rand) {}
