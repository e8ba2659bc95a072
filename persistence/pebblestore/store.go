package pebblestore

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/otafleet/otafleet/persistence"
)

// Errors of this package; the persistence errors apply as well.
var (
	// ErrFormat: the database is not an otafleet store this build can read.
	ErrFormat = errors.New("pebblestore: unsupported store format")
	// ErrFailed: a write to the WAL failed earlier; the store refuses every
	// call until it is reopened.
	ErrFailed = errors.New("pebblestore: store failed")
	// ErrSealKey: Options.SealKey does not match the store.
	ErrSealKey = errors.New("pebblestore: seal key mismatch")
	// ErrOwnSealKey (an ErrSealKey): Options.SealKey with Options.ReadOnly
	// for a store that keeps its own key, which would need a re-seal.
	ErrOwnSealKey = fmt.Errorf("%w: the store keeps its own seal key", ErrSealKey)
)

// formatVersion is the store format this build writes and reads.
const formatVersion = 1

// Options configure Open. The zero value opens a store on the real
// filesystem with the default logger.
type Options struct {
	// FS is the filesystem; nil means vfs.Default. Tests pass vfs.NewMem(),
	// vfs.NewCrashableMem() or an errorfs wrapper.
	FS vfs.FS
	// Logger receives Pebble's messages and the store's; nil means
	// slog.Default().
	Logger *slog.Logger
	// SealKey, if set (32 bytes), seals device credentials instead of a key
	// kept in the store. A store created with one needs it on every Open. A
	// store that keeps its own key is re-sealed under SealKey when opened
	// with one, and its own key removed, in one synced batch.
	SealKey []byte
	// PreviousSealKey, if set (32 bytes, with SealKey), rotates the seal
	// key: a store sealed under PreviousSealKey is re-sealed under SealKey
	// when opened, in one synced batch. A store already sealed under SealKey
	// opens as usual, so the option may stay set across restarts.
	PreviousSealKey []byte
	// ReadOnly opens an existing store for reading only (to copy it, say):
	// Open writes nothing, not even to finish what a crash left (the
	// leftovers of blob writes stay, invisible), and every write fails. A
	// missing store fails Open, and so does a store that would need a
	// re-seal: PreviousSealKey is refused, and so is a SealKey for a store
	// that keeps its own key (open it without one).
	ReadOnly bool
	// Verify runs Verify during Open: a full scan that refuses a store with a
	// corrupt entry.
	Verify bool
	// CacheBytes is the size of Pebble's block cache; 0 means
	// DefaultCacheBytes. The registry's and the actors' reads hit it.
	CacheBytes int64
	// Tune, if set, adjusts the Pebble options before Open (tests shrink the
	// memtable to exercise flushes).
	Tune func(*pebble.Options)
	// OnFatal is called after Pebble reported a fatal storage error (a failed
	// WAL write or sync). Pebble's code does not expect to continue after
	// one, so OnFatal must not return; nil logs the error and exits the
	// process with status 70, after which a restart recovers from what was
	// synced (every acknowledged append).
	OnFatal func(error)
}

// Store is a persistence.Store on Pebble.
type Store struct {
	db      *pebble.DB
	log     *slog.Logger
	onFatal func(error)

	mu       sync.Mutex // guards closed and blobs; Close releases blobs (their snapMu) under it
	closed   bool
	inflight sync.WaitGroup // calls in progress; Close waits for them
	blobs    map[*blob]struct{}

	fatal    atomic.Pointer[error] // first fatal Pebble error
	panicked atomic.Bool           // Pebble panicked inside a commit: its commit lock may be held

	streamSeed maphash.Seed
	stripes    [1024]stripe // striped by stream

	syncedAppends   atomic.Uint64 // Append calls committed with pebble.Sync
	unsyncedAppends atomic.Uint64 // Append calls committed with pebble.NoSync

	regMu sync.Mutex // serialises registry writes (they check references)

	sealKey [32]byte

	writingMu sync.Mutex
	writing   map[string]bool // blobs being written

	// afterCommit, set by tests only, runs after every successful commit;
	// its error is the commit's (an outcome the caller cannot know).
	afterCommit func() error
}

var (
	_ persistence.Store         = (*Store)(nil)
	_ persistence.AppendCounter = (*Store)(nil)
)

// DefaultCacheBytes is the block cache of a store opened without
// Options.CacheBytes. Pebble's own default (8 MiB) is evicted by the
// compactions of a burst of device events, and every registry read then
// goes to disk.
const DefaultCacheBytes = 64 << 20

// Open opens (creating it if need be) the store in directory dir.
func Open(dir string, opts Options) (*Store, error) {
	s := &Store{
		onFatal:    opts.OnFatal,
		log:        opts.Logger,
		blobs:      map[*blob]struct{}{},
		streamSeed: maphash.MakeSeed(),
		writing:    map[string]bool{},
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("store", dir)
	fs := opts.FS
	if mem, ok := fs.(*vfs.MemFS); ok {
		fs = WithoutWALRecycling(mem)
	}
	popts := &pebble.Options{
		FS:                 fs,
		Logger:             pebbleLogger{s},
		FormatMajorVersion: pebble.FormatNewest,
		CacheSize:          opts.CacheBytes,
		EventListener: &pebble.EventListener{
			BackgroundError: func(err error) { s.log.Error("pebble background error", "err", err.Error()) },
			DataCorruption: func(info pebble.DataCorruptionInfo) {
				s.log.Error("pebble data corruption", "path", info.Path, "err", info.Details.Error())
			},
			WriteStallBegin: func(info pebble.WriteStallBeginInfo) {
				s.log.Warn("pebble write stall", "reason", info.Reason)
			},
		},
	}
	if popts.CacheSize <= 0 {
		popts.CacheSize = DefaultCacheBytes
	}
	if opts.Tune != nil {
		opts.Tune(popts)
	}
	if opts.ReadOnly {
		popts.ReadOnly = true
		popts.ErrorIfNotExists = true
	}
	db, err := pebble.Open(dir, popts)
	if err != nil {
		if pebble.IsCorruptionError(err) {
			return nil, fmt.Errorf("pebblestore: open %s: %w: %w", dir, persistence.ErrCorrupt, err)
		}
		return nil, fmt.Errorf("pebblestore: open %s: %w", dir, err)
	}
	s.db = db
	if err := s.start(opts); err != nil {
		s.closeDB()
		return nil, fmt.Errorf("pebblestore: open %s: %w", dir, err)
	}
	return s, nil
}

// start checks (or, on a new store, writes) the format marker and the seal
// key, removes leftover blob writes and runs Verify if asked to.
func (s *Store) start(opts Options) error {
	if err := s.failed(); err != nil {
		return err
	}
	if opts.SealKey != nil && len(opts.SealKey) != len(s.sealKey) {
		return fmt.Errorf("%w: Options.SealKey has %d bytes, want %d", persistence.ErrInvalid, len(opts.SealKey), len(s.sealKey))
	}
	if opts.PreviousSealKey != nil && (opts.SealKey == nil || len(opts.PreviousSealKey) != len(s.sealKey)) {
		return fmt.Errorf("%w: Options.PreviousSealKey needs Options.SealKey and %d bytes (it has %d)", persistence.ErrInvalid, len(s.sealKey), len(opts.PreviousSealKey))
	}
	if opts.ReadOnly && opts.PreviousSealKey != nil {
		return fmt.Errorf("%w: Options.PreviousSealKey re-seals the store, which Options.ReadOnly forbids", persistence.ErrInvalid)
	}
	format, ok, err := s.get(keyFormat)
	if err != nil {
		return err
	}
	if !ok && opts.ReadOnly {
		return fmt.Errorf("%w: the database has no format marker %q: not an otafleet store", ErrFormat, keyFormat)
	}
	if !ok {
		return s.create(opts)
	}
	v, n := binary.Uvarint(format)
	if n <= 0 || n != len(format) || v == 0 {
		return &persistence.CorruptError{Key: keyFormat, Reason: fmt.Sprintf("bad format marker %x", format)}
	}
	if v != formatVersion {
		return fmt.Errorf("%w: the store has format %d, this build reads format %d (a newer otafleet wrote it?)", ErrFormat, v, formatVersion)
	}
	seal, ok, err := s.get(keySeal)
	if err != nil {
		return err
	}
	switch {
	case !ok:
		return &persistence.CorruptError{Key: keySeal, Reason: "missing"}
	case len(seal) == 1+32 && seal[0] == sealStored:
		copy(s.sealKey[:], seal[1:])
		if opts.SealKey != nil && opts.ReadOnly {
			return fmt.Errorf("%w; open it read-only without Options.SealKey (with one it would be re-sealed)", ErrOwnSealKey)
		}
		if opts.SealKey != nil {
			if err := s.reseal(opts.SealKey, "the store's own key"); err != nil {
				return err
			}
		}
	case len(seal) == 1+32 && seal[0] == sealExternal:
		switch {
		case opts.SealKey == nil:
			return fmt.Errorf("%w: the store is sealed with an external key (Options.SealKey); pass it", ErrSealKey)
		case hmac.Equal(persistence.SealCheck(opts.SealKey), seal[1:]):
			copy(s.sealKey[:], opts.SealKey)
		case opts.PreviousSealKey != nil && hmac.Equal(persistence.SealCheck(opts.PreviousSealKey), seal[1:]):
			copy(s.sealKey[:], opts.PreviousSealKey)
			if err := s.reseal(opts.SealKey, "the previous key"); err != nil {
				return err
			}
		case opts.PreviousSealKey != nil:
			return fmt.Errorf("%w: neither Options.SealKey nor Options.PreviousSealKey is the key the store is sealed with", ErrSealKey)
		default:
			return fmt.Errorf("%w: Options.SealKey is not the key the store is sealed with", ErrSealKey)
		}
	default:
		return &persistence.CorruptError{Key: keySeal, Reason: fmt.Sprintf("bad seal record of %d bytes", len(seal))}
	}
	if !opts.ReadOnly {
		if err := s.cleanBlobWrites(); err != nil {
			return err
		}
	}
	if opts.Verify {
		return s.Verify(context.Background())
	}
	return nil
}

// create initialises an empty database: format marker and seal key, synced.
func (s *Store) create(opts Options) error {
	it, err := s.db.NewIter(nil)
	if err != nil {
		return err
	}
	nonEmpty := it.First()
	var first []byte
	if nonEmpty {
		first = bytes.Clone(it.Key())
	}
	if err := firstErr(it.Error(), it.Close()); err != nil {
		return s.readErr(nil, err)
	}
	if nonEmpty {
		return fmt.Errorf("%w: the database holds keys (first %q) but no format marker %q: not an otafleet store", ErrFormat, first, keyFormat)
	}
	b := s.db.NewBatch()
	defer b.Close()
	_ = b.Set(keyFormat, binary.AppendUvarint(nil, formatVersion), nil)
	if opts.SealKey != nil {
		copy(s.sealKey[:], opts.SealKey)
		_ = b.Set(keySeal, append([]byte{sealExternal}, persistence.SealCheck(opts.SealKey)...), nil)
	} else {
		if _, err := rand.Read(s.sealKey[:]); err != nil {
			return fmt.Errorf("generating the seal key: %w", err)
		}
		_ = b.Set(keySeal, append([]byte{sealStored}, s.sealKey[:]...), nil)
	}
	return s.commit(b, pebble.Sync)
}

const (
	sealStored   = 1 // m/seal holds the key
	sealExternal = 2 // m/seal holds persistence.SealCheck(key)
)

// Close waits for calls in progress, closes open blobs and the database.
// Later calls fail with persistence.ErrClosed; a second Close returns nil.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.inflight.Wait()
	s.mu.Lock()
	for b := range s.blobs {
		b.release()
	}
	s.blobs = nil
	s.mu.Unlock()
	return s.closeDB()
}

func (s *Store) closeDB() error {
	if s.panicked.Load() {
		// Pebble may hold its commit lock: DB.Close would block forever.
		s.log.Error("pebblestore: not closing the database after a panic in Pebble; restart the process")
		return s.failed()
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("pebblestore: close: %w", err)
	}
	return nil
}

// enter starts a call: it fails once the store is closed or failed, or ctx
// has ended. A successful enter must be paired with exit.
func (s *Store) enter(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return persistence.ErrClosed
	}
	s.inflight.Add(1)
	s.mu.Unlock()
	if err := s.failed(); err != nil {
		s.inflight.Done()
		return err
	}
	if err := ctx.Err(); err != nil {
		s.inflight.Done()
		return err
	}
	return nil
}

func (s *Store) exit() { s.inflight.Done() }

// fail records the first fatal error; from then on every call fails.
func (s *Store) fail(err error) {
	if s.fatal.CompareAndSwap(nil, &err) {
		s.log.Error("pebblestore: fatal storage error; every call fails until the store is reopened", "err", err.Error())
	}
}

// failed returns the ErrFailed error once the store has failed.
func (s *Store) failed() error {
	if p := s.fatal.Load(); p != nil {
		return fmt.Errorf("%w after a fatal storage error (%v): reopen the store", ErrFailed, *p)
	}
	return nil
}

// commit commits b. A commit that Pebble could not make durable makes Pebble
// call Fatalf (then return nil) or panic; both fail the store and this call.
func (s *Store) commit(b *pebble.Batch, opts *pebble.WriteOptions) (err error) {
	if err := s.failed(); err != nil {
		return err
	}
	defer func() {
		if r := recover(); r != nil {
			s.panicked.Store(true)
			s.fail(fmt.Errorf("pebble panicked in a commit: %v", r))
			err = s.failed()
		}
	}()
	if err := b.Commit(opts); err != nil {
		return fmt.Errorf("pebblestore: commit: %w", err)
	}
	if s.afterCommit != nil {
		if err := s.afterCommit(); err != nil {
			return fmt.Errorf("pebblestore: commit: %w", err)
		}
	}
	return s.failed()
}

// get returns a copy of the value at key; false if there is none.
func (s *Store) get(key []byte) ([]byte, bool, error) {
	return getFrom(s.db, key, s)
}

// reader is what *pebble.DB and *pebble.Snapshot have in common.
type reader interface {
	Get(key []byte) ([]byte, io.Closer, error)
	NewIter(o *pebble.IterOptions) (*pebble.Iterator, error)
}

// getFrom returns a copy of r's value at key; false if there is none.
func getFrom(r reader, key []byte, s *Store) ([]byte, bool, error) {
	v, c, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, s.readErr(key, err)
	}
	v = bytes.Clone(v)
	return v, true, c.Close()
}

// readErr turns a Pebble read error at key into the store's error: a
// *persistence.CorruptError for corruption.
func (s *Store) readErr(key []byte, err error) error {
	if pebble.IsCorruptionError(err) {
		return &persistence.CorruptError{Key: bytes.Clone(key), Reason: "pebble: " + err.Error()}
	}
	return fmt.Errorf("pebblestore: read %q: %w", key, err)
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// pebbleLogger sends Pebble's log to the store's logger and turns Fatalf
// (which Pebble expects to end the process) into the failed state.
type pebbleLogger struct{ s *Store }

// Infof logs Pebble's routine messages (WAL replay, flushes, compactions) at
// debug level: they are many and rarely useful to an operator.
func (l pebbleLogger) Infof(format string, args ...any) {
	l.s.log.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	l.s.log.Error(fmt.Sprintf(format, args...), "component", "pebble")
}

func (l pebbleLogger) Fatalf(format string, args ...any) {
	err := fmt.Errorf(format, args...)
	l.s.fail(err)
	if l.s.onFatal != nil {
		l.s.onFatal(err)
	}
	os.Exit(70) // Pebble must not go on after a fatal error; the journal recovers on restart
}
