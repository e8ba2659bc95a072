package pgstore

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"

	"github.com/otafleet/otafleet/persistence"
)

// execUnsynced runs one write committed with synchronous_commit off: it
// survives a crash of the process (PostgreSQL has it) and becomes durable
// with the next synced commit or within PostgreSQL's wal_writer_delay; a
// crash of the database may lose it.
func (s *Store) execUnsynced(ctx context.Context, query string, args ...any) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	_, err := s.lazy.Exec(ctx, query, args...)
	return err
}

// PutSession implements persistence.Sessions, unsynced (see execUnsynced).
func (s *Store) PutSession(ctx context.Context, transport, id string, value []byte) error {
	if err := persistence.ValidateSessionKey(transport, id); err != nil {
		return err
	}
	if value == nil {
		value = []byte{}
	}
	err := s.execUnsynced(ctx, `
		INSERT INTO sessions (transport, id, value) VALUES ($1, $2, $3)
		ON CONFLICT (transport, id) DO UPDATE SET value = excluded.value`, transport, id, value)
	if err != nil && !errors.Is(err, persistence.ErrClosed) {
		return s.dbErr("putting session "+transport+"/"+id, err)
	}
	return err
}

// GetSession implements persistence.Sessions.
func (s *Store) GetSession(ctx context.Context, transport, id string) ([]byte, error) {
	if err := persistence.ValidateSessionKey(transport, id); err != nil {
		return nil, err
	}
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.exit()
	var v []byte
	err := s.pool.QueryRow(ctx, `SELECT value FROM sessions WHERE transport = $1 AND id = $2`, transport, id).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, notFound("session", transport+"/"+id)
	}
	if err != nil {
		return nil, s.dbErr("reading session "+transport+"/"+id, err)
	}
	return v, nil
}

// DeleteSession implements persistence.Sessions, unsynced.
func (s *Store) DeleteSession(ctx context.Context, transport, id string) error {
	if err := persistence.ValidateSessionKey(transport, id); err != nil {
		return err
	}
	err := s.execUnsynced(ctx, `DELETE FROM sessions WHERE transport = $1 AND id = $2`, transport, id)
	if err != nil && !errors.Is(err, persistence.ErrClosed) {
		return s.dbErr("deleting session "+transport+"/"+id, err)
	}
	return err
}

// ListSessions implements persistence.Sessions, a page at a time.
func (s *Store) ListSessions(ctx context.Context, transport string, fn func(id string, value []byte) error) error {
	if err := persistence.ValidateID(transport); err != nil {
		return err
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	type session struct {
		id    string
		value []byte
	}
	after := ""
	for {
		rows, err := s.pool.Query(ctx, `SELECT id, value FROM sessions WHERE transport = $1 AND id > $2 ORDER BY id LIMIT $3`, transport, after, pageRows)
		if err != nil {
			return s.dbErr("listing the sessions of "+transport, err)
		}
		page, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (session, error) {
			var x session
			err := row.Scan(&x.id, &x.value)
			return x, err
		})
		if err != nil {
			return s.dbErr("listing the sessions of "+transport, err)
		}
		for _, x := range page {
			if err := fn(x.id, x.value); err != nil {
				return err
			}
		}
		if len(page) < pageRows {
			return nil
		}
		after = page[len(page)-1].id
	}
}
