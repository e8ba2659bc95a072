package pgstore

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/otafleet/otafleet/persistence"
)

var _ persistence.Lister = (*Store)(nil)

// Streams implements persistence.Lister: every stream's row (its first
// append, even one of records only, writes one) and every snapshot, by
// kind and ID, a page at a time.
func (s *Store) Streams(ctx context.Context, fn func(persistence.Stream) error) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	var after persistence.Stream
	for {
		rows, err := s.pool.Query(ctx, `
			SELECT kind, id FROM (SELECT kind, id FROM streams UNION SELECT kind, id FROM snapshots) AS s
			WHERE (kind, id) > ($1, $2) ORDER BY kind, id LIMIT $3`, string(after.Kind), after.ID, pageRows)
		if err != nil {
			return s.dbErr("listing the streams", err)
		}
		page, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (persistence.Stream, error) {
			var kind, id string
			err := row.Scan(&kind, &id)
			return persistence.Stream{Kind: persistence.Kind(kind), ID: id}, err
		})
		if err != nil {
			return s.dbErr("listing the streams", err)
		}
		for _, st := range page {
			if err := st.Validate(); err != nil {
				return &persistence.CorruptError{Key: []byte("streams/" + st.String()), Reason: err.Error()}
			}
			if err := fn(st); err != nil {
				return err
			}
		}
		if len(page) < pageRows {
			return nil
		}
		after = page[len(page)-1]
	}
}

// Blobs implements persistence.Lister.
func (s *Store) Blobs(ctx context.Context, fn func(id string) error) error {
	return s.eachName(ctx, "the blobs", `SELECT id FROM blobs WHERE id > $1 ORDER BY id LIMIT $2`, fn)
}

// SessionTransports implements persistence.Lister.
func (s *Store) SessionTransports(ctx context.Context, fn func(transport string) error) error {
	return s.eachName(ctx, "the session transports", `SELECT DISTINCT transport FROM sessions WHERE transport > $1 ORDER BY transport LIMIT $2`, fn)
}

// eachName calls fn with the names query lists a page at a time (its
// arguments: the last name of the page before, the page size).
func (s *Store) eachName(ctx context.Context, what, query string, fn func(string) error) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	after := ""
	for {
		rows, err := s.pool.Query(ctx, query, after, pageRows)
		if err != nil {
			return s.dbErr("listing "+what, err)
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return s.dbErr("listing "+what, err)
		}
		for _, n := range names {
			if err := fn(n); err != nil {
				return err
			}
		}
		if len(names) < pageRows {
			return nil
		}
		after = names[len(names)-1]
	}
}
