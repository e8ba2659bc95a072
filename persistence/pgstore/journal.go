package pgstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/persistence"
)

// appendReq is one Append waiting for its group commit.
type appendReq struct {
	ctx  context.Context
	a    persistence.Append
	last uint64     // the stream's last sequence number once written
	res  chan error // buffered: the committer never blocks on it
}

// committer is the group commit: goroutines (pipelines) that each take
// the appends waiting (at most max, of streams no other batch in flight
// holds) and write them with one statement, in one transaction, while the
// next ones queue. With more than one pipeline, one batch waits for its WAL
// flush while the next is sent; a stream is never in two batches at once.
// After a commit, a pipeline lets the appenders it answered append again
// before it takes the next batch (see rejoin).
type committer struct {
	s     *Store
	max   int
	clock clock.Clock // bounds rejoin

	mu       sync.Mutex
	queue    []*appendReq
	inFlight map[persistence.Stream]bool // streams of the batches being written
	wake     chan struct{}               // buffered: the queue is not empty
	quit     chan struct{}
	done     sync.WaitGroup
}

func newCommitter(s *Store, max, pipelines int) *committer {
	c := &committer{
		s: s, max: max, clock: clock.Real(), inFlight: map[persistence.Stream]bool{},
		wake: make(chan struct{}, pipelines), quit: make(chan struct{}),
	}
	for range pipelines {
		c.done.Add(1)
		go c.run()
	}
	return c
}

// submit queues r and waits for its outcome, or for ctx (the append may
// then still be written: its outcome is unknown, as after any failed
// write).
func (c *committer) submit(r *appendReq) error {
	c.mu.Lock()
	c.queue = append(c.queue, r)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	select {
	case err := <-r.res:
		return err
	case <-r.ctx.Done():
		return fmt.Errorf("pgstore: append to %s: %w (it may have been written)", r.a.Stream, r.ctx.Err())
	}
}

// stop ends the goroutines (Close waits for the Append calls first).
func (c *committer) stop() {
	close(c.quit)
	c.done.Wait()
}

func (c *committer) run() {
	defer c.done.Done()
	for {
		select {
		case <-c.wake:
		case <-c.quit:
			c.mu.Lock()
			for _, r := range c.queue {
				r.res <- persistence.ErrClosed
			}
			c.queue = nil
			c.mu.Unlock()
			return
		}
		for {
			batch, more := c.take()
			if len(batch) == 0 {
				break
			}
			if more { // another pipeline may take the rest
				select {
				case c.wake <- struct{}{}:
				default:
				}
			}
			queued := c.commit(batch)
			c.mu.Lock()
			for _, r := range batch {
				delete(c.inFlight, r.a.Stream)
			}
			c.mu.Unlock()
			c.rejoin(queued, len(batch))
		}
	}
}

// Bounds of rejoin: scheduler yields (each a fraction of a microsecond
// when nothing else is runnable) and time, against a WAL flush of half a
// millisecond or more.
const (
	rejoinIdle      = 8   // yields without a new append that end the wait
	rejoinMaxYields = 256 // yields at most
	// rejoinMaxWait bounds the wait when yields are slow (other
	// goroutines run in them) and the queue grows without reaching its
	// mark.
	rejoinMaxWait = 100 * time.Microsecond
)

// rejoin lets the appenders that a commit just answered append again
// before the next batch is taken. An actor appends its step, runs its
// effects and, when its mailbox holds more, appends its next step at
// once; a batch taken the moment a commit returns holds only the appends
// that queued during that commit, and the appenders just answered then
// wait for its whole commit before theirs starts: the writers split into
// two halves whose batches alternate, a WAL flush each. rejoin yields the
// processor (runtime.Gosched) until answered more appends are queued than
// when the commit began to answer (queued), until the queue has not grown
// for rejoinIdle yields in a row, or for at most rejoinMaxYields yields
// and rejoinMaxWait: the few microseconds the appenders take to come
// back, so that one flush carries most of them (BenchmarkAppendSynced:
// with 64 writers, 32 appends per commit without it and 50 to 54 with it;
// with 256, about 135 and 190 to 205). When nobody comes back it costs a
// few idle yields; it arms no timer. PostgreSQL's commit_delay is the server's version of this wait,
// but it only delays a commit while other sessions have transactions
// open, and a group commit is one session's transaction.
func (c *committer) rejoin(queued, answered int) {
	last, idle := c.queued(), 0
	start := c.clock.Now()
	for range rejoinMaxYields {
		if last-queued >= answered || c.clock.Since(start) >= rejoinMaxWait {
			return
		}
		runtime.Gosched()
		n := c.queued()
		if n == last {
			if idle++; idle >= rejoinIdle {
				return
			}
		} else {
			idle = 0
		}
		last = n
	}
}

// queued returns how many appends wait in the queue.
func (c *committer) queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

// take removes up to max appends of distinct streams from the queue, in
// queue order; an append to a stream already in a batch waits for the
// next one (its Expected depends on the outcome of the first). Appends
// whose context ended are answered and dropped. more reports whether
// appends remain queued.
func (c *committer) take() (batch []*appendReq, more bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rest := c.queue[:0]
	for _, r := range c.queue {
		switch {
		case r.ctx.Err() != nil:
			r.res <- r.ctx.Err()
		case len(batch) < c.max && !c.inFlight[r.a.Stream]:
			c.inFlight[r.a.Stream] = true
			batch = append(batch, r)
		default:
			rest = append(rest, r)
		}
	}
	clear(c.queue[len(rest):])
	c.queue = rest
	return batch, len(rest) > 0
}

// appendSQL returns the statement that writes a batch of appends: it moves
// the head of every stream whose last sequence number is the append's
// Expected (u, an existing head; i, a new stream), and writes the events,
// records and marks of those appends only (w). A head that another writer
// moved, even one committing at the same time (the UPDATE waits for its
// row lock and checks again), fails its append; the events' primary key
// (kind, id, seq) is the second fence. The statement returns the streams
// that were written. Its parts for events, records to set and records to
// delete are there only when the batch has some (appendStatements holds
// the 8 variants), so that PostgreSQL plans no more than it runs.
func appendSQL(events, sets, deletes bool) string {
	var b strings.Builder
	n := 0
	params := func(types ...string) string {
		var ps []string
		for _, t := range types {
			n++
			ps = append(ps, fmt.Sprintf("$%d::%s", n, t))
		}
		return strings.Join(ps, ", ")
	}
	b.WriteString(`WITH r AS (
	SELECT * FROM unnest(` + params("text[]", "text[]", "bigint[]", "bigint[]", "smallint[]") + `) AS r(kind, id, expected, last, active)
), u AS (
	UPDATE streams s SET last_seq = r.last,
		active = CASE r.active WHEN 1 THEN true WHEN 0 THEN false ELSE s.active END
	FROM r WHERE s.kind = r.kind AND s.id = r.id AND s.last_seq = r.expected
	RETURNING s.kind, s.id
), i AS (
	INSERT INTO streams (kind, id, last_seq, active)
	SELECT kind, id, last, active = 1 FROM r WHERE expected = 0
	ON CONFLICT (kind, id) DO NOTHING
	RETURNING kind, id
), w AS (
	SELECT kind, id FROM u UNION ALL SELECT kind, id FROM i
)`)
	if events {
		b.WriteString(`, e AS (
	INSERT INTO events (kind, id, seq, body)
	SELECT x.kind, x.id, x.seq, x.body
	FROM unnest(` + params("text[]", "text[]", "bigint[]", "bytea[]") + `) AS x(kind, id, seq, body)
	JOIN w ON w.kind = x.kind AND w.id = x.id
)`)
	}
	if sets {
		b.WriteString(`, rs AS (
	INSERT INTO records (kind, id, key, body)
	SELECT x.kind, x.id, x.key, x.body
	FROM unnest(` + params("text[]", "text[]", "bytea[]", "bytea[]") + `) AS x(kind, id, key, body)
	JOIN w ON w.kind = x.kind AND w.id = x.id
	ON CONFLICT (kind, id, key) DO UPDATE SET body = excluded.body
)`)
	}
	if deletes {
		b.WriteString(`, rd AS (
	DELETE FROM records d
	USING unnest(` + params("text[]", "text[]", "bytea[]") + `) AS x(kind, id, key), w
	WHERE w.kind = x.kind AND w.id = x.id AND d.kind = x.kind AND d.id = x.id AND d.key = x.key
)`)
	}
	b.WriteString("\nSELECT kind, id FROM w")
	return b.String()
}

// appendStatements are appendSQL's variants, indexed by events | sets<<1 |
// deletes<<2.
var appendStatements = func() (v [8]string) {
	for i := range v {
		v[i] = appendSQL(i&1 != 0, i&2 != 0, i&4 != 0)
	}
	return v
}()

// commit writes batch and answers its appends; it returns how many appends
// were queued when it began to answer (see rejoin).
func (c *committer) commit(batch []*appendReq) (queued int) {
	var (
		kinds, ids     []string
		expected, last []int64
		active         []int16
		eKinds, eIDs   []string
		eSeqs          []int64
		eBodies        [][]byte
		sKinds, sIDs   []string
		sKeys, sBodies [][]byte
		dKinds, dIDs   []string
		dKeys          [][]byte
		synced         bool
	)
	for _, r := range batch {
		a := r.a
		kind := string(a.Stream.Kind)
		kinds, ids = append(kinds, kind), append(ids, a.Stream.ID)
		expected, last = append(expected, int64(a.Expected)), append(last, int64(r.last))
		switch {
		case a.Active == nil:
			active = append(active, -1)
		case *a.Active:
			active = append(active, 1)
		default:
			active = append(active, 0)
		}
		for i, e := range a.Events {
			eKinds, eIDs = append(eKinds, kind), append(eIDs, a.Stream.ID)
			eSeqs = append(eSeqs, int64(a.Expected)+int64(i)+1)
			eBodies = append(eBodies, persistence.EncodeEvent(e))
		}
		// The last operation on a key wins (an append may delete a key
		// and set it again); the statement may touch a row only once.
		final := map[string]int{}
		for i, rec := range a.Records {
			final[string(rec.Key)] = i
		}
		for i, rec := range a.Records {
			if final[string(rec.Key)] != i {
				continue
			}
			if rec.Delete {
				dKinds, dIDs, dKeys = append(dKinds, kind), append(dIDs, a.Stream.ID), append(dKeys, rec.Key)
			} else {
				sKinds, sIDs = append(sKinds, kind), append(sIDs, a.Stream.ID)
				sKeys, sBodies = append(sKeys, rec.Key), append(sBodies, persistence.EncodeRecord(rec))
			}
		}
		synced = synced || !a.NoSync
	}
	won := map[persistence.Stream]bool{}
	// The commit is bounded (Options.Timeout): a server that hangs fails
	// the batch rather than holding every append behind it.
	ctx, cancel := c.s.bound(context.Background())
	defer cancel()
	err := func() error {
		// A batch of NoSync appends only goes through the connections
		// with synchronous_commit off: the commit returns before its WAL
		// record is flushed; the next synced commit flushes the WAL past
		// it.
		pool := c.s.pool
		if !synced {
			pool = c.s.lazy
		}
		args := []any{kinds, ids, expected, last, active}
		variant := 0
		if len(eSeqs) > 0 {
			variant |= 1
			args = append(args, eKinds, eIDs, eSeqs, eBodies)
		}
		if len(sKeys) > 0 {
			variant |= 2
			args = append(args, sKinds, sIDs, sKeys, sBodies)
		}
		if len(dKeys) > 0 {
			variant |= 4
			args = append(args, dKinds, dIDs, dKeys)
		}
		rows, err := pool.Query(ctx, appendStatements[variant], args...)
		if err != nil {
			return err
		}
		var kind, id string
		_, err = pgx.ForEachRow(rows, []any{&kind, &id}, func() error {
			won[persistence.Stream{Kind: persistence.Kind(kind), ID: id}] = true
			return nil
		})
		return err
	}()
	if err != nil {
		if pgCode(err) == codeUniqueViolation {
			err = fmt.Errorf("%w: %w", persistence.ErrConflict, err)
		}
		err = c.s.callErr(ctx, "group commit", err)
		queued = c.queued()
		for _, r := range batch {
			r.res <- fmt.Errorf("append to %s: %w", r.a.Stream, err)
		}
		return queued
	}
	c.s.markUp()
	c.s.groupCommits.Add(1)
	queued = c.queued()
	for _, r := range batch {
		if !won[r.a.Stream] {
			r.res <- fmt.Errorf("%w: stream %s does not end at %d, the writer's Expected", persistence.ErrConflict, r.a.Stream, r.a.Expected)
			continue
		}
		if r.a.NoSync {
			c.s.unsyncedAppends.Add(1)
		} else {
			c.s.syncedAppends.Add(1)
		}
		r.res <- nil
	}
	return queued
}

// Append implements persistence.EventStore: the append joins the next
// group commit (see committer).
func (s *Store) Append(ctx context.Context, a persistence.Append) (uint64, error) {
	if err := a.Validate(); err != nil {
		return 0, err
	}
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	defer s.exit()
	if a.Expected > math.MaxInt64 || uint64(len(a.Events)) > math.MaxInt64-a.Expected {
		return 0, fmt.Errorf("%w: stream %s: sequence numbers exhausted", persistence.ErrInvalid, a.Stream)
	}
	if len(a.Events) == 0 && len(a.Records) == 0 && a.Active == nil {
		last, err := s.lastSeq(ctx, a.Stream)
		if err != nil {
			return 0, err
		}
		if last != a.Expected {
			return 0, fmt.Errorf("%w: stream %s ends at %d, writer expected %d", persistence.ErrConflict, a.Stream, last, a.Expected)
		}
		return last, nil
	}
	r := &appendReq{ctx: ctx, a: a, last: a.Expected + uint64(len(a.Events)), res: make(chan error, 1)}
	if err := s.commits.submit(r); err != nil {
		return 0, err
	}
	return r.last, nil
}

// lastSeq reads st's head.
func (s *Store) lastSeq(ctx context.Context, st persistence.Stream) (uint64, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	var last int64
	err := s.pool.QueryRow(ctx, `SELECT last_seq FROM streams WHERE kind = $1 AND id = $2`, string(st.Kind), st.ID).Scan(&last)
	if errors.Is(err, pgx.ErrNoRows) {
		s.markUp()
		return 0, nil
	}
	if err != nil {
		return 0, s.callErr(ctx, "reading the head of "+st.String(), err)
	}
	s.markUp()
	return uint64(last), nil
}

// LastSeq implements persistence.EventStore.
func (s *Store) LastSeq(ctx context.Context, st persistence.Stream) (uint64, error) {
	if err := st.Validate(); err != nil {
		return 0, err
	}
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	defer s.exit()
	return s.lastSeq(ctx, st)
}

// pageRows bounds the rows one query of a paged read returns, so that no
// connection stays busy while the caller's function runs.
const pageRows = 1024

// Load implements persistence.EventStore. Sequence numbers must follow each
// other from after+1: a gap is a *persistence.CorruptError.
func (s *Store) Load(ctx context.Context, st persistence.Stream, after uint64, fn func(persistence.Event) error) error {
	if err := st.Validate(); err != nil {
		return err
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	if after >= math.MaxInt64 {
		return nil
	}
	next := after + 1
	for {
		page, err := s.loadPage(ctx, st, next)
		if err != nil {
			return err
		}
		for _, e := range page {
			if err := fn(e); err != nil {
				return err
			}
		}
		if len(page) < pageRows {
			return nil
		}
		next += uint64(len(page))
	}
}

// loadPage reads up to pageRows events of st from next on, bounded by the
// store's timeout.
func (s *Store) loadPage(ctx context.Context, st persistence.Stream, next uint64) ([]persistence.Event, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	var page []persistence.Event
	{
		rows, err := s.pool.Query(ctx, `SELECT seq, body FROM events WHERE kind = $1 AND id = $2 AND seq >= $3 ORDER BY seq LIMIT $4`,
			string(st.Kind), st.ID, int64(next), pageRows)
		if err != nil {
			return nil, s.callErr(ctx, "loading "+st.String(), err)
		}
		var seq int64
		var body []byte
		_, err = pgx.ForEachRow(rows, []any{&seq, &body}, func() error {
			want := next + uint64(len(page))
			if uint64(seq) != want {
				return &persistence.CorruptError{Key: persistence.EventKey(st, uint64(seq)), Reason: fmt.Sprintf("sequence number %d where %d was expected (a gap in the stream)", seq, want)}
			}
			e, err := persistence.DecodeEvent(uint64(seq), body)
			if err != nil {
				return &persistence.CorruptError{Key: persistence.EventKey(st, uint64(seq)), Reason: err.Error()}
			}
			page = append(page, e) // body is a fresh slice per row
			return nil
		})
		if err != nil {
			return nil, s.corruptOr(ctx, "loading "+st.String(), err)
		}
	}
	s.markUp()
	return page, nil
}

// corruptOr passes a *persistence.CorruptError and wraps any other error
// (see callErr).
func (s *Store) corruptOr(ctx context.Context, what string, err error) error {
	var ce *persistence.CorruptError
	if errors.As(err, &ce) {
		return ce
	}
	return s.callErr(ctx, what, err)
}

// SaveSnapshot implements persistence.EventStore (synced).
func (s *Store) SaveSnapshot(ctx context.Context, st persistence.Stream, snap persistence.Snapshot) error {
	if err := st.Validate(); err != nil {
		return err
	}
	if snap.Seq > math.MaxInt64 {
		return fmt.Errorf("%w: snapshot of %s at %d", persistence.ErrInvalid, st, snap.Seq)
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	tag, err := s.pool.Exec(ctx, `
		INSERT INTO snapshots (kind, id, body)
		SELECT $1, $2, $3 WHERE $4 <= coalesce((SELECT last_seq FROM streams WHERE kind = $1 AND id = $2), 0)
		ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body`,
		string(st.Kind), st.ID, persistence.EncodeSnapshot(snap), int64(snap.Seq))
	if err != nil {
		return s.dbErr("saving the snapshot of "+st.String(), err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: snapshot of %s at %d is past its last event", persistence.ErrInvalid, st, snap.Seq)
	}
	return nil
}

// LoadSnapshot implements persistence.EventStore.
func (s *Store) LoadSnapshot(ctx context.Context, st persistence.Stream) (persistence.Snapshot, bool, error) {
	if err := st.Validate(); err != nil {
		return persistence.Snapshot{}, false, err
	}
	if err := s.enter(ctx); err != nil {
		return persistence.Snapshot{}, false, err
	}
	defer s.exit()
	ctx, cancel := s.bound(ctx)
	defer cancel()
	var body []byte
	err := s.pool.QueryRow(ctx, `SELECT body FROM snapshots WHERE kind = $1 AND id = $2`, string(st.Kind), st.ID).Scan(&body)
	if errors.Is(err, pgx.ErrNoRows) {
		s.markUp()
		return persistence.Snapshot{}, false, nil
	}
	if err != nil {
		return persistence.Snapshot{}, false, s.callErr(ctx, "loading the snapshot of "+st.String(), err)
	}
	s.markUp()
	snap, err := persistence.DecodeSnapshot(body)
	if err != nil {
		return persistence.Snapshot{}, false, &persistence.CorruptError{Key: persistence.SnapshotKey(st), Reason: err.Error()}
	}
	return snap, true, nil
}

// LoadRecords implements persistence.EventStore. It reads the state area
// with one query, so as of one snapshot: a batch's records are all there or
// none.
func (s *Store) LoadRecords(ctx context.Context, st persistence.Stream, fn func(persistence.Record) error) error {
	if err := st.Validate(); err != nil {
		return err
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	ctx, cancel := s.bound(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT key, body FROM records WHERE kind = $1 AND id = $2 ORDER BY key`, string(st.Kind), st.ID)
	if err != nil {
		return s.callErr(ctx, "loading the records of "+st.String(), err)
	}
	var recs []persistence.Record
	var key, body []byte
	_, err = pgx.ForEachRow(rows, []any{&key, &body}, func() error {
		k := persistence.RecordKey(st, key)
		if err := (persistence.Record{Key: key}).Validate(); err != nil {
			return &persistence.CorruptError{Key: k, Reason: err.Error()}
		}
		r, err := persistence.DecodeRecord(key, body)
		if err != nil {
			return &persistence.CorruptError{Key: k, Reason: err.Error()}
		}
		recs = append(recs, r)
		return nil
	})
	if err != nil {
		return s.corruptOr(ctx, "loading the records of "+st.String(), err)
	}
	s.markUp()
	for _, r := range recs {
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// Active implements persistence.EventStore; IDs come in byte order, a page
// at a time.
func (s *Store) Active(ctx context.Context, kind persistence.Kind, fn func(string) error) error {
	if err := kind.Validate(); err != nil {
		return err
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	after := ""
	for {
		ids, err := s.activePage(ctx, kind, after)
		if err != nil {
			return err
		}
		for _, id := range ids {
			if err := fn(id); err != nil {
				return err
			}
		}
		if len(ids) < pageRows {
			return nil
		}
		after = ids[len(ids)-1]
	}
}

// activePage lists up to pageRows active streams of kind after after,
// bounded by the store's timeout.
func (s *Store) activePage(ctx context.Context, kind persistence.Kind, after string) ([]string, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT id FROM streams WHERE kind = $1 AND active AND id > $2 ORDER BY id LIMIT $3`, string(kind), after, pageRows)
	if err != nil {
		return nil, s.callErr(ctx, "listing the active streams", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, s.callErr(ctx, "listing the active streams", err)
	}
	s.markUp()
	return ids, nil
}
