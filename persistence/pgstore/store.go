package pgstore

import (
	"context"
	"crypto/hmac"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/database"
	"github.com/pressly/goose/v3/lock"

	"github.com/otafleet/otafleet/persistence"
)

// Errors of this package; the persistence errors apply as well.
var (
	// ErrSchema: the database's schema is newer than this build's (a newer
	// otafleet migrated it); the store refuses to open it.
	ErrSchema = errors.New("pgstore: database schema is newer than this build")
	// ErrSealKey: Options.SealKey is missing or not the key the database's
	// credentials are sealed with.
	ErrSealKey = errors.New("pgstore: seal key mismatch")
	// ErrPermission: the database user may not create or write the store's
	// tables (a read-only user, say).
	ErrPermission = errors.New("pgstore: permission denied")
)

// CheckDSN reports whether dsn is a connection string Open can use (a
// malformed one is persistence.ErrInvalid); the error does not quote the
// string, which may hold a password.
func CheckDSN(dsn string) error {
	if _, err := pgxpool.ParseConfig(dsn); err != nil {
		return fmt.Errorf("%w: pgstore: connection string: %v", persistence.ErrInvalid, redact(err))
	}
	return nil
}

// SchemaTable is the table in which goose records the applied migrations.
const SchemaTable = "schema_version"

//go:embed migrations/*.sql
var migrations embed.FS

// Options configure Open.
type Options struct {
	// SealKey (persistence.SealKeyLen bytes) seals device credentials. It is
	// required: the key must not live in a database that every node and
	// every operator with a SQL client reads. The database keeps only a
	// check value, so a wrong key fails Open.
	SealKey []byte
	// PreviousSealKey, if set (persistence.SealKeyLen bytes), rotates the
	// seal key: a database sealed under PreviousSealKey is re-sealed under
	// SealKey by Open, in one transaction (a crash leaves all under the old
	// key or all under the new one). A database sealed under SealKey opens
	// as usual, so the option may stay set across restarts. Every node
	// still running with the old key must be stopped first: a credential
	// it writes afterwards would be sealed under a key the database no
	// longer names.
	PreviousSealKey []byte
	// Logger receives the store's messages; nil means slog.Default().
	Logger *slog.Logger
	// MaxConns bounds the connection pool; 0 means DefaultMaxConns.
	MaxConns int32
	// MaxBatch bounds how many appends one group commit carries; 0 means
	// DefaultMaxBatch.
	MaxBatch int
	// Pipelines is how many group commits may be in flight at once; 0
	// means DefaultPipelines. On a small machine one is best (measured on
	// 2 cores: more pipelines make smaller batches, and each costs a
	// statement).
	Pipelines int
	// Timeout bounds each call of the journal made without a deadline of
	// its own (a group commit, a read of a stream): a server that stops
	// answering (hung, or its host gone without a reset) fails the call
	// with persistence.ErrUnavailable after Timeout rather than hold it
	// forever. 0 means DefaultTimeout.
	Timeout time.Duration
}

// Defaults of Options.
const (
	DefaultMaxConns  = 16
	DefaultMaxBatch  = 512
	DefaultPipelines = 1
	DefaultTimeout   = 10 * time.Second
)

// Store is a persistence.Store on PostgreSQL.
type Store struct {
	pool *pgxpool.Pool
	// lazy is a small pool of connections whose commits do not wait for
	// the WAL flush (synchronous_commit off): unsynced appends and
	// sessions.
	lazy   *pgxpool.Pool
	log    *slog.Logger
	sealer persistence.Sealer

	mu       sync.Mutex // guards closed and blobs
	closed   bool
	inflight sync.WaitGroup // calls in progress; Close waits for them
	blobs    map[*blob]struct{}
	readers  map[int64]int  // open blobs per generation (this process)
	doomed   map[int64]bool // deleted generations whose chunks wait for their readers

	// blobMu orders OpenBlob with DeleteBlob: an open either finds the
	// header and registers its reader before a delete looks at the
	// readers, or finds no header.
	blobMu  sync.Mutex
	commits *committer
	heads   heads // the streams' last sequence numbers known (see commit)

	syncedAppends   atomic.Uint64
	unsyncedAppends atomic.Uint64
	groupCommits    atomic.Uint64 // see GroupCommits

	// timeout is Options.Timeout (see bound).
	timeout time.Duration
	// down is set while the server is unavailable: from the first call
	// that found it so to the first that succeeds. Each change is logged
	// once (see markDown, markUp).
	down atomic.Bool
}

var (
	_ persistence.Store         = (*Store)(nil)
	_ persistence.AppendCounter = (*Store)(nil)
	_ persistence.Pinger        = (*Store)(nil)
)

// Open connects to the database at dsn (a postgres:// URL or a key=value
// connection string; credentials may also come from PGPASSWORD or
// PGPASSFILE), applies the embedded migrations that it lacks, and checks
// the seal key. A database whose schema is newer than this build's fails
// with ErrSchema.
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	if len(opts.SealKey) != persistence.SealKeyLen {
		return nil, fmt.Errorf("%w: Options.SealKey has %d bytes, want %d (with PostgreSQL the seal key comes from outside the database)", ErrSealKey, len(opts.SealKey), persistence.SealKeyLen)
	}
	sl, err := persistence.NewSealer(opts.SealKey)
	if err != nil {
		return nil, err
	}
	if opts.PreviousSealKey != nil && len(opts.PreviousSealKey) != persistence.SealKeyLen {
		return nil, fmt.Errorf("%w: Options.PreviousSealKey has %d bytes, want %d", persistence.ErrInvalid, len(opts.PreviousSealKey), persistence.SealKeyLen)
	}
	if err := CheckDSN(dsn); err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = opts.MaxConns
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	s := &Store{
		timeout: opts.Timeout,
		log:     opts.Logger,
		sealer:  sl,
		blobs:   map[*blob]struct{}{},
		readers: map[int64]int{},
		doomed:  map[int64]bool{},
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	s.log = s.log.With("store", "postgres", "database", cfg.ConnConfig.Database, "host", cfg.ConnConfig.Host)
	pipelines := opts.Pipelines
	if pipelines <= 0 {
		pipelines = DefaultPipelines
	}
	// The statements are few and their plans do not depend on their
	// arguments (keys looked up in primary keys, arrays unnested): plan
	// each once per connection rather than at every group commit.
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		// A new connection may be to a server that crashed, or was
		// restarted, since the heads were read: the unsynced appends
		// they count may be lost (see heads).
		s.heads.reset()
		if _, err := c.Exec(ctx, "SET plan_cache_mode = force_generic_plan"); err != nil && pgCode(err) == "" {
			return err // a server that lacks the setting plans as it likes
		}
		return nil
	}
	lazyCfg := cfg.Copy()
	lazyCfg.MaxConns = int32(pipelines) + 2
	lazyCfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	if s.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	if s.lazy, err = pgxpool.NewWithConfig(ctx, lazyCfg); err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	if err := s.start(ctx, opts); err != nil {
		s.pool.Close()
		s.lazy.Close()
		if pgCode(err) == codeInsufficientPrivilege {
			return nil, fmt.Errorf("%w: the database user may not create or write the store's tables (a read-only user?): %w", ErrPermission, err)
		}
		return nil, err
	}
	maxBatch := opts.MaxBatch
	if maxBatch <= 0 {
		maxBatch = DefaultMaxBatch
	}
	s.commits = newCommitter(s, maxBatch, pipelines)
	return s, nil
}

// redact drops what a connection string error may quote of the string
// (a password): pgconn's parse errors name the offending part.
func redact(err error) string {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		return "cannot parse the connection string (check its syntax)"
	}
	return err.Error()
}

// start migrates the schema and checks the seal key.
func (s *Store) start(ctx context.Context, opts Options) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("pgstore: connecting: %w", err)
	}
	if _, err := Migrate(ctx, s.pool, s.log); err != nil {
		return err
	}
	check := persistence.SealCheck(opts.SealKey)
	if _, err := s.pool.Exec(ctx, `INSERT INTO meta (name, value) VALUES ('seal_check', $1) ON CONFLICT (name) DO NOTHING`, check); err != nil {
		return fmt.Errorf("pgstore: recording the seal key's check value: %w", err)
	}
	var stored []byte
	if err := s.pool.QueryRow(ctx, `SELECT value FROM meta WHERE name = 'seal_check'`).Scan(&stored); err != nil {
		return fmt.Errorf("pgstore: reading the seal key's check value: %w", err)
	}
	switch {
	case hmac.Equal(stored, check):
	case opts.PreviousSealKey != nil && hmac.Equal(stored, persistence.SealCheck(opts.PreviousSealKey)):
		if err := s.reseal(ctx, opts.PreviousSealKey, opts.SealKey); err != nil {
			return err
		}
	case opts.PreviousSealKey != nil:
		return fmt.Errorf("%w: neither Options.SealKey nor Options.PreviousSealKey is the key the database's credentials are sealed with", ErrSealKey)
	default:
		return fmt.Errorf("%w: the database's credentials are sealed with another key", ErrSealKey)
	}
	return s.sweepBlobs(ctx)
}

// SchemaVersions are the schema versions Migrate found and left.
type SchemaVersions struct {
	Before, After, Latest int64 // Latest: the newest this build knows
}

// Migrate applies the embedded migrations the database lacks, under
// goose's advisory lock (so that nodes starting together migrate once),
// and returns the versions. A database of a newer schema than this build
// knows fails with ErrSchema and is left as it is.
func Migrate(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) (SchemaVersions, error) {
	return MigrateTo(ctx, pool, log, 0)
}

// MigrateTo is Migrate up to version only (0: the newest), as an older
// build would leave the database: the tests of upgrades start from it.
func MigrateTo(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger, version int64) (SchemaVersions, error) {
	var v SchemaVersions
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return v, err
	}
	// Nodes starting together wait for the one migrating: poll the lock
	// every second, for up to 5 minutes.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 300))
	if err != nil {
		return v, err
	}
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	store, err := database.NewStore(database.DialectPostgres, SchemaTable)
	if err != nil {
		return v, err
	}
	p, err := goose.NewProvider("", db, sub,
		goose.WithStore(store), goose.WithSessionLocker(locker), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return v, fmt.Errorf("pgstore: migrations: %w", err)
	}
	defer p.Close()
	for _, src := range p.ListSources() {
		v.Latest = max(v.Latest, src.Version)
	}
	if v.Before, err = dbVersion(ctx, pool); err != nil {
		return v, err
	}
	if v.Before > v.Latest {
		return v, fmt.Errorf("%w: the database is at schema version %d, this build knows versions up to %d (upgrade otafleet)", ErrSchema, v.Before, v.Latest)
	}
	v.After = v.Before
	target := v.Latest
	if version > 0 {
		target = min(version, v.Latest)
	}
	if v.Before >= target {
		return v, nil
	}
	res, err := p.UpTo(ctx, target)
	for _, r := range res {
		if r.Error == nil {
			log.Info("pgstore: schema migrated", "version", r.Source.Version, "file", r.Source.Path)
			v.After = max(v.After, r.Source.Version)
		}
	}
	if err != nil {
		return v, fmt.Errorf("pgstore: migrating the schema from version %d: %w", v.Before, err)
	}
	return v, nil
}

// dbVersion reads the database's schema version: 0 when it has none.
func dbVersion(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, SchemaTable).Scan(&exists); err != nil {
		return 0, fmt.Errorf("pgstore: reading the schema version: %w", err)
	}
	if !exists {
		return 0, nil
	}
	var v int64
	if err := pool.QueryRow(ctx, `SELECT coalesce(max(version_id), 0) FROM `+SchemaTable+` WHERE is_applied`).Scan(&v); err != nil {
		return 0, fmt.Errorf("pgstore: reading the schema version: %w", err)
	}
	return v, nil
}

// Close waits for calls in progress, stops the group commit, closes open
// blobs and the connections. Later calls fail with persistence.ErrClosed;
// a second Close returns nil.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.inflight.Wait()
	s.commits.stop()
	s.mu.Lock()
	for b := range s.blobs {
		b.closed.Store(true)
	}
	s.blobs = nil
	s.mu.Unlock()
	s.pool.Close()
	s.lazy.Close()
	return nil
}

// enter registers a call in progress; it fails once the store is closed
// or ctx is done.
func (s *Store) enter(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return persistence.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.inflight.Add(1)
	return nil
}

func (s *Store) exit() { s.inflight.Done() }

// Appends implements persistence.AppendCounter.
func (s *Store) Appends() (synced, unsynced uint64) {
	return s.syncedAppends.Load(), s.unsyncedAppends.Load()
}

// GroupCommits returns how many group commits (each one statement in one
// transaction) have written appends since the store was opened: with
// Appends, the appends each commit carried on average.
func (s *Store) GroupCommits() uint64 { return s.groupCommits.Load() }

// Postgres error codes the store maps.
const (
	codeUniqueViolation       = "23505"
	codeForeignKeyViolation   = "23503"
	codeInsufficientPrivilege = "42501"
)

// pgCode returns err's PostgreSQL error code, "" if it has none.
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// dbErr wraps an error of the database in what names the call. An error
// that says the connection is lost (the server crashed or restarted, or
// cannot be reached) wraps persistence.ErrUnavailable, and closes the idle
// connections too, which are lost with it, so that the next calls connect
// again: the store resumes once the server is back.
func (s *Store) dbErr(what string, err error) error {
	if connLost(err) {
		s.pool.Reset()
		s.lazy.Reset()
		err = fmt.Errorf("pgstore: %s: %w: the connection to PostgreSQL is lost: %w", what, persistence.ErrUnavailable, err)
		s.markDown(err)
		return err
	}
	return fmt.Errorf("pgstore: %s: %w", what, err)
}

// errTimeout is the cause of a context that bound ended: the server did
// not answer in time.
var errTimeout = fmt.Errorf("%w: PostgreSQL did not answer in time", persistence.ErrUnavailable)

// bound returns ctx bounded by the store's timeout when it has no deadline
// of its own; callErr tells its end from other failures.
func (s *Store) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeoutCause(ctx, s.timeout, errTimeout)
}

// callErr is dbErr for a call made under a context of bound: a call that
// bound's timeout ended is persistence.ErrUnavailable (it may have been
// carried out: its outcome is unknown), and its connection is lost.
func (s *Store) callErr(ctx context.Context, what string, err error) error {
	if errors.Is(context.Cause(ctx), errTimeout) {
		s.pool.Reset()
		s.lazy.Reset()
		err = fmt.Errorf("pgstore: %s: %w (Options.Timeout, %v): %w", what, errTimeout, s.timeout, err)
		s.markDown(err)
		return err
	}
	return s.dbErr(what, err)
}

// markDown records that the server is unavailable, logging it once.
func (s *Store) markDown(err error) {
	if s.down.CompareAndSwap(false, true) {
		s.log.Error("pgstore: PostgreSQL is unavailable; appends and reads fail until it is back", "error", err)
	}
}

// markUp records that the server answers again, logging it once.
func (s *Store) markUp() {
	if s.down.Load() && s.down.CompareAndSwap(true, false) {
		s.log.Info("pgstore: PostgreSQL is available again")
	}
}

// Ping implements persistence.Pinger: it asks the server for an answer
// (bounded by Options.Timeout when ctx has no deadline). A server that
// does not answer is persistence.ErrUnavailable.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	ctx, cancel := s.bound(ctx)
	defer cancel()
	if err := s.pool.Ping(ctx); err != nil {
		err = s.callErr(ctx, "ping", err)
		if !errors.Is(err, persistence.ErrUnavailable) && ctx.Err() == nil {
			err = fmt.Errorf("%w: %w", persistence.ErrUnavailable, err)
			s.markDown(err)
		}
		return err
	}
	s.markUp()
	return nil
}

// connLost reports whether err says that the connection to the server is
// lost: a connection exception or an operator intervention (shutdown,
// crash) from the server, or a network error.
func connLost(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "57P")
	}
	var ne net.Error
	var ce *pgconn.ConnectError
	return errors.As(err, &ne) || errors.As(err, &ce) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

// tx runs fn in a transaction (committed synchronously).
func (s *Store) tx(ctx context.Context, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, s.pool, fn)
}
