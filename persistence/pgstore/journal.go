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

// The statement of a group commit is a set of data-modifying parts, each
// an INSERT or DELETE over arrays that are unnested (one array parameter a
// column, whatever the batch's size, so that one prepared statement serves
// every batch); a part is there only when the batch has rows for it, and
// the last part present is the main statement, the others in WITH.
const (
	partEvents   = 1 << iota // the events
	partNewHeads             // the streams' rows of first appends without a mark
	partMarks                // the streams' active marks (a row with its mark)
	partSets                 // records to set
	partDeletes              // records to delete
	partUnplace              // the placeholders of appends without events
	partsAll                 // the number of variants
)

// appendParts are the parts, in the order of partEvents...partUnplace, with
// the types of their array parameters; %s stands for the parameters.
var appendParts = [...]struct{ sql, types string }{
	{`INSERT INTO events (kind, id, seq, body) SELECT * FROM unnest(%s)`, "text[] text[] bigint[] bytea[]"},
	{`INSERT INTO streams (kind, id) SELECT * FROM unnest(%s) ON CONFLICT (kind, id) DO NOTHING`, "text[] text[]"},
	{`INSERT INTO streams (kind, id, active) SELECT * FROM unnest(%s)
	ON CONFLICT (kind, id) DO UPDATE SET active = excluded.active`, "text[] text[] boolean[]"},
	{`INSERT INTO records (kind, id, key, body) SELECT * FROM unnest(%s)
	ON CONFLICT (kind, id, key) DO UPDATE SET body = excluded.body`, "text[] text[] bytea[] bytea[]"},
	{`DELETE FROM records d USING unnest(%s) AS x(kind, id, key)
	WHERE d.kind = x.kind AND d.id = x.id AND d.key = x.key`, "text[] text[] bytea[]"},
	{`DELETE FROM events d USING unnest(%s) AS x(kind, id, seq)
	WHERE d.kind = x.kind AND d.id = x.id AND d.seq = x.seq`, "text[] text[] bigint[]"},
}

// appendSQL returns the statement of the parts set in mask.
func appendSQL(mask int) string {
	var parts []string
	n := 0
	for i, p := range appendParts {
		if mask&(1<<i) == 0 {
			continue
		}
		var ps []string
		for _, t := range strings.Fields(p.types) {
			n++
			ps = append(ps, fmt.Sprintf("$%d::%s", n, t))
		}
		parts = append(parts, fmt.Sprintf(p.sql, strings.Join(ps, ", ")))
	}
	if len(parts) == 0 {
		return ""
	}
	var b strings.Builder
	for i, p := range parts[:len(parts)-1] {
		if i == 0 {
			b.WriteString("WITH ")
		} else {
			b.WriteString(",\n")
		}
		fmt.Fprintf(&b, "p%d AS (%s)", i, p)
	}
	if len(parts) > 1 {
		b.WriteString("\n")
	}
	b.WriteString(parts[len(parts)-1])
	return b.String()
}

// appendStatements are appendSQL's variants, indexed by their mask.
var appendStatements = func() (v [partsAll]string) {
	for i := range v {
		v[i] = appendSQL(i)
	}
	return v
}()

// placeSQL inserts the placeholders of appends without events (see write).
const placeSQL = `INSERT INTO events (kind, id, seq, body) SELECT kind, id, seq, '\x'::bytea FROM unnest($1::text[], $2::text[], $3::bigint[]) AS x(kind, id, seq)`

// headsSQL reads the last sequence number of each of a list of streams,
// in the list's order.
const headsSQL = `SELECT (SELECT coalesce(max(e.seq), 0) FROM events e WHERE e.kind = x.kind AND e.id = x.id)
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS x(kind, id, n) ORDER BY n`

// conflictRounds bounds how often a group commit that failed on the
// events' unique key re-reads its streams' heads and tries again without
// the appends that conflict: each round drops the appends whose writer
// was behind, so more than one round means another writer was appending
// to the same streams at that moment, again and again.
const conflictRounds = 4

// epochRounds bounds the rounds of a group commit that new connections
// interrupt (errEpoch): the pools growing to their size, at worst.
const epochRounds = 2 * DefaultMaxConns

// commit writes batch and answers its appends; it returns how many appends
// were queued when it began to answer (see rejoin).
//
// The fence is the events' unique key (kind, id, seq) with the heads this
// process knows (Store.heads, a lower bound of each stream's last sequence
// number: events are never deleted, so it only grows). An append whose
// Expected is below the known head conflicts at once; one above it, or of
// a stream not known, is checked against the head read from the events
// table first (one query for the batch); the rest are written as they
// are. An append whose Expected is behind the stream's real head then
// writes a sequence number that exists, or that a concurrent writer is
// writing: the events' unique key fails the whole statement (PostgreSQL
// waits for the other transaction's outcome first), and the batch's heads
// are read again: the appends that are behind fail with
// persistence.ErrConflict and the others are written in a new round.
func (c *committer) commit(batch []*appendReq) (queued int) {
	s := c.s
	// The commit is bounded (Options.Timeout): a server that hangs fails
	// the batch rather than holding every append behind it.
	ctx, cancel := s.bound(context.Background())
	defer cancel()
	conflict := func(r *appendReq, last uint64) {
		r.res <- fmt.Errorf("%w: stream %s ends at %d, writer expected %d", persistence.ErrConflict, r.a.Stream, last, r.a.Expected)
	}
	var todo, check []*appendReq
	known, epoch := s.heads.lookup(batch)
	for _, r := range batch {
		last, ok := known[r]
		switch {
		case ok && r.a.Expected < last:
			conflict(r, last)
		case r.a.Expected > 0 && (!ok || r.a.Expected > last):
			check = append(check, r)
			todo = append(todo, r)
		default:
			// Expected is the known head, or 0: the events' key
			// checks that nothing follows it.
			todo = append(todo, r)
		}
	}
	for round := 1; ; round++ {
		if len(check) > 0 {
			lasts, err := s.readHeads(ctx, check)
			if err != nil {
				// Nothing was written: the heads known stay.
				err = s.callErr(ctx, "group commit: reading the heads", err)
				queued = c.queued()
				for _, r := range todo {
					r.res <- fmt.Errorf("append to %s: %w", r.a.Stream, err)
				}
				return queued
			}
			behind := map[*appendReq]uint64{}
			for i, r := range check {
				s.heads.raise(r.a.Stream, lasts[i], epoch)
				if lasts[i] != r.a.Expected {
					behind[r] = lasts[i]
				}
			}
			rest := todo[:0]
			for _, r := range todo {
				if last, ok := behind[r]; ok {
					conflict(r, last)
				} else {
					rest = append(rest, r)
				}
			}
			todo, check = rest, nil
		}
		if len(todo) == 0 {
			return c.queued()
		}
		err := c.write(ctx, todo, epoch)
		if err == nil {
			break
		}
		if pgCode(err) == codeUniqueViolation && round < conflictRounds || errors.Is(err, errEpoch) && round < epochRounds {
			// Nothing was written: read the heads, try again.
			check, epoch = todo, s.heads.now()
			continue
		}
		if errors.Is(err, errEpoch) {
			err = fmt.Errorf("%w: %w", persistence.ErrUnavailable, err)
		}
		if pgCode(err) == codeUniqueViolation {
			err = fmt.Errorf("%w: %w", persistence.ErrConflict, err)
		}
		err = s.callErr(ctx, "group commit", err)
		queued = c.queued()
		for _, r := range todo {
			// The outcome may be unknown (the connection was lost
			// at the commit): read the head again next time.
			s.heads.forget(r.a.Stream)
			r.res <- fmt.Errorf("append to %s: %w", r.a.Stream, err)
		}
		return queued
	}
	s.markUp()
	s.groupCommits.Add(1)
	queued = c.queued()
	for _, r := range todo {
		s.heads.raise(r.a.Stream, r.last, epoch)
		if r.a.NoSync {
			s.unsyncedAppends.Add(1)
		} else {
			s.syncedAppends.Add(1)
		}
		r.res <- nil
	}
	return queued
}

// write writes the appends of a group commit in one transaction (a batch
// of NoSync appends through the connections with synchronous_commit off:
// the commit returns before its WAL record is flushed; the next synced
// commit flushes the WAL past it). A duplicate sequence number fails it
// whole (codeUniqueViolation).
//
// An append without events (records or a mark only) must also fail when
// its stream has moved past Expected, or when another writer is moving it:
// it inserts a placeholder event at Expected+1, which the events' key
// fences as it fences an event, and deletes it in the same transaction.
// No reader ever sees it (it is never committed), and a concurrent writer
// of that sequence number waits for the transaction and then writes it.
// Such appends (an actor converting its state to records, a copy marking a
// stream active) are rare; the others take one statement.
func (c *committer) write(ctx context.Context, todo []*appendReq, epoch uint64) error {
	var (
		eKinds, eIDs   []string
		eSeqs          []int64
		eBodies        [][]byte
		hKinds, hIDs   []string
		mKinds, mIDs   []string
		marks          []bool
		sKinds, sIDs   []string
		sKeys, sBodies [][]byte
		dKinds, dIDs   []string
		dKeys          [][]byte
		pKinds, pIDs   []string
		pSeqs          []int64
		synced         bool
	)
	for _, r := range todo {
		a := r.a
		kind := string(a.Stream.Kind)
		for i, e := range a.Events {
			eKinds, eIDs = append(eKinds, kind), append(eIDs, a.Stream.ID)
			eSeqs = append(eSeqs, int64(a.Expected)+int64(i)+1)
			eBodies = append(eBodies, persistence.EncodeEvent(e))
		}
		if len(a.Events) == 0 {
			pKinds, pIDs, pSeqs = append(pKinds, kind), append(pIDs, a.Stream.ID), append(pSeqs, int64(a.Expected)+1)
		}
		// Every stream has a row in streams (the lister's and the active
		// mark's), written by its first append (Expected 0: a later
		// append has one) or with its mark.
		switch {
		case a.Active != nil:
			mKinds, mIDs, marks = append(mKinds, kind), append(mIDs, a.Stream.ID), append(marks, *a.Active)
		case a.Expected == 0:
			hKinds, hIDs = append(hKinds, kind), append(hIDs, a.Stream.ID)
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
	var args []any
	mask := 0
	add := func(part int, n int, cols ...any) {
		if n > 0 {
			mask |= part
			args = append(args, cols...)
		}
	}
	add(partEvents, len(eSeqs), eKinds, eIDs, eSeqs, eBodies)
	add(partNewHeads, len(hIDs), hKinds, hIDs)
	add(partMarks, len(mIDs), mKinds, mIDs, marks)
	add(partSets, len(sKeys), sKinds, sIDs, sKeys, sBodies)
	add(partDeletes, len(dKeys), dKinds, dIDs, dKeys)
	add(partUnplace, len(pSeqs), pKinds, pIDs, pSeqs)
	pool := c.s.pool
	if !synced {
		pool = c.s.lazy
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	// The heads that decided which appends to check are of epoch: if a
	// connection was made since, the server may have lost appends they
	// count (see heads).
	if c.s.heads.now() != epoch {
		return errEpoch
	}
	if len(pSeqs) == 0 {
		_, err := conn.Exec(ctx, appendStatements[mask], args...)
		return err
	}
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, placeSQL, pKinds, pIDs, pSeqs); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, appendStatements[mask], args...)
		return err
	})
}

// errEpoch fails a group commit whose heads were reset before its
// statement was sent (see heads); nothing was written.
var errEpoch = errors.New("pgstore: a new connection to PostgreSQL was made while the group commit was prepared")

// readHeads reads the last sequence numbers of the streams of appends.
func (s *Store) readHeads(ctx context.Context, appends []*appendReq) ([]uint64, error) {
	kinds, ids := make([]string, len(appends)), make([]string, len(appends))
	for i, r := range appends {
		kinds[i], ids[i] = string(r.a.Stream.Kind), r.a.Stream.ID
	}
	rows, err := s.pool.Query(ctx, headsSQL, kinds, ids)
	if err != nil {
		return nil, err
	}
	lasts, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, err
	}
	if len(lasts) != len(appends) {
		return nil, fmt.Errorf("pgstore: %d heads read for %d streams", len(lasts), len(appends))
	}
	out := make([]uint64, len(lasts))
	for i, l := range lasts {
		out[i] = uint64(l)
	}
	return out, nil
}

// headStreams bounds the heads a Store keeps (some 100 bytes each).
const headStreams = 1 << 18

// heads holds the last sequence number of streams this process wrote or
// read lately: a lower bound of each stream's, since a stream's last
// sequence number only grows (events are never deleted) and every value
// put here was the stream's at some moment, on a server that has not lost
// it since. The one way a stream's last sequence number goes down is a
// crash of PostgreSQL that loses unsynced appends (synchronous_commit off:
// NoSync appends, whose writer has seen them acknowledged). A crash ends
// every connection, so every new connection resets the heads (AfterConnect)
// and starts an epoch; a value read or written in an earlier epoch is
// not kept, and a group commit whose epoch ends before its statement is
// sent on a connection decides again (see write). An entry is also
// dropped when a commit's outcome is unknown, and one at random when the
// cache holds headStreams entries; a miss reads the head from the events
// table.
type heads struct {
	mu    sync.Mutex
	epoch uint64
	last  map[persistence.Stream]uint64
}

// lookup returns the heads known of the streams of batch, and the epoch.
func (h *heads) lookup(batch []*appendReq) (map[*appendReq]uint64, uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	known := make(map[*appendReq]uint64, len(batch))
	for _, r := range batch {
		if last, ok := h.last[r.a.Stream]; ok {
			known[r] = last
		}
	}
	return known, h.epoch
}

// now returns the epoch.
func (h *heads) now() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.epoch
}

// raise records that st's last sequence number is at least last, as read
// or written in epoch (nothing if that ended).
func (h *heads) raise(st persistence.Stream, last, epoch uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if epoch != h.epoch {
		return
	}
	if h.last == nil {
		h.last = map[persistence.Stream]uint64{}
	}
	old, ok := h.last[st]
	if !ok && len(h.last) >= headStreams {
		for k := range h.last {
			delete(h.last, k)
			break
		}
	}
	h.last[st] = max(old, last)
}

func (h *heads) forget(st persistence.Stream) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.last, st)
}

// reset forgets every head and starts a new epoch.
func (h *heads) reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	clear(h.last)
	h.epoch++
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

// lastSeq reads st's head: its last event's sequence number (0 if none).
func (s *Store) lastSeq(ctx context.Context, st persistence.Stream) (uint64, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	var last int64
	epoch := s.heads.now()
	err := s.pool.QueryRow(ctx, `SELECT coalesce(max(seq), 0) FROM events WHERE kind = $1 AND id = $2`, string(st.Kind), st.ID).Scan(&last)
	if err != nil {
		return 0, s.callErr(ctx, "reading the head of "+st.String(), err)
	}
	s.markUp()
	s.heads.raise(st, uint64(last), epoch)
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
		epoch := s.heads.now()
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
			if len(page) > 0 { // the stream's last event, as of the query
				s.heads.raise(st, page[len(page)-1].Seq, epoch)
			}
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
		SELECT $1, $2, $3 WHERE $4 = 0 OR EXISTS (SELECT FROM events WHERE kind = $1 AND id = $2 AND seq = $4)
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
