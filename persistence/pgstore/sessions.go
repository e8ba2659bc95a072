package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/otafleet/otafleet/persistence"
)

var _ persistence.NodeSessions = (*Store)(nil)

// execUnsynced runs one write committed with synchronous_commit off: it
// survives a crash of the process (PostgreSQL has it) and becomes durable
// with the next synced commit or within PostgreSQL's wal_writer_delay; a
// crash of the database may lose it.
func (s *Store) execUnsynced(ctx context.Context, query string, args ...any) (int64, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	defer s.exit()
	tag, err := s.lazy.Exec(ctx, query, args...)
	return tag.RowsAffected(), err
}

// PutSession implements persistence.Sessions, unsynced (see execUnsynced):
// the sessions of node "" (see persistence.NodeSessions).
func (s *Store) PutSession(ctx context.Context, transport, id string, value []byte) error {
	return s.putSession(ctx, "", transport, id, value)
}

// GetSession implements persistence.Sessions.
func (s *Store) GetSession(ctx context.Context, transport, id string) ([]byte, error) {
	return s.getSession(ctx, "", transport, id)
}

// DeleteSession implements persistence.Sessions, unsynced.
func (s *Store) DeleteSession(ctx context.Context, transport, id string) error {
	return s.deleteSession(ctx, "", transport, id)
}

// ListSessions implements persistence.Sessions, a page at a time.
func (s *Store) ListSessions(ctx context.Context, transport string, fn func(id string, value []byte) error) error {
	return s.listSessions(ctx, "", transport, fn)
}

// NodeSessions implements persistence.NodeSessions.
func (s *Store) NodeSessions(node string) persistence.Sessions {
	if node == "" {
		return s
	}
	return nodeSessions{s: s, node: node}
}

// DropNodeSessions implements persistence.NodeSessions, unsynced.
func (s *Store) DropNodeSessions(ctx context.Context, node string) (int, error) {
	if node == "" {
		return 0, fmt.Errorf("%w: pgstore: the sessions of node \"\" are every node's, not a node's to drop", persistence.ErrInvalid)
	}
	if err := persistence.ValidateID(node); err != nil {
		return 0, err
	}
	n, err := s.execUnsynced(ctx, `DELETE FROM sessions WHERE node = $1`, node)
	if err != nil && !errors.Is(err, persistence.ErrClosed) {
		return 0, s.dbErr("dropping the sessions of node "+node, err)
	}
	if n > 0 {
		s.log.Info("sessions of a node dropped", "node", node, "sessions", n)
	}
	return int(n), err
}

// SessionNodes implements persistence.NodeSessions.
func (s *Store) SessionNodes(ctx context.Context, fn func(node string) error) error {
	// "" sorts first and eachName starts after "": ask for it apart.
	if err := s.enter(ctx); err != nil {
		return err
	}
	var shared bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM sessions WHERE node = '')`).Scan(&shared)
	s.exit()
	if err != nil {
		return s.dbErr("listing the session nodes", err)
	}
	if shared {
		if err := fn(""); err != nil {
			return err
		}
	}
	return s.eachName(ctx, "the session nodes", `SELECT DISTINCT node FROM sessions WHERE node > $1 ORDER BY node LIMIT $2`, fn)
}

// nodeSessions is one node's view of the sessions (Store.NodeSessions).
type nodeSessions struct {
	s    *Store
	node string
}

func (n nodeSessions) PutSession(ctx context.Context, transport, id string, value []byte) error {
	return n.s.putSession(ctx, n.node, transport, id, value)
}

func (n nodeSessions) GetSession(ctx context.Context, transport, id string) ([]byte, error) {
	return n.s.getSession(ctx, n.node, transport, id)
}

func (n nodeSessions) DeleteSession(ctx context.Context, transport, id string) error {
	return n.s.deleteSession(ctx, n.node, transport, id)
}

func (n nodeSessions) ListSessions(ctx context.Context, transport string, fn func(id string, value []byte) error) error {
	return n.s.listSessions(ctx, n.node, transport, fn)
}

// checkSession checks a session's key and its node.
func checkSession(node, transport, id string) error {
	if err := persistence.ValidateSessionKey(transport, id); err != nil {
		return err
	}
	if node != "" {
		return persistence.ValidateID(node)
	}
	return nil
}

// on names a node's session in messages.
func on(node, transport, id string) string {
	if node == "" {
		return transport + "/" + id
	}
	return transport + "/" + id + " of node " + strconv.Quote(node)
}

// putSession writes the session, held by node (moved there from another
// holder).
func (s *Store) putSession(ctx context.Context, node, transport, id string, value []byte) error {
	if err := checkSession(node, transport, id); err != nil {
		return err
	}
	if value == nil {
		value = []byte{}
	}
	_, err := s.execUnsynced(ctx, `
		INSERT INTO sessions (transport, id, value, node) VALUES ($1, $2, $3, $4)
		ON CONFLICT (transport, id) DO UPDATE SET value = excluded.value, node = excluded.node`, transport, id, value, node)
	if err != nil && !errors.Is(err, persistence.ErrClosed) {
		return s.dbErr("putting session "+on(node, transport, id), err)
	}
	return err
}

func (s *Store) getSession(ctx context.Context, node, transport, id string) ([]byte, error) {
	if err := checkSession(node, transport, id); err != nil {
		return nil, err
	}
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.exit()
	var v []byte
	err := s.pool.QueryRow(ctx, `SELECT value FROM sessions WHERE transport = $1 AND id = $2 AND node = $3`, transport, id, node).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, notFound("session", on(node, transport, id))
	}
	if err != nil {
		return nil, s.dbErr("reading session "+on(node, transport, id), err)
	}
	return v, nil
}

// deleteSession deletes the session if node holds it.
func (s *Store) deleteSession(ctx context.Context, node, transport, id string) error {
	if err := checkSession(node, transport, id); err != nil {
		return err
	}
	_, err := s.execUnsynced(ctx, `DELETE FROM sessions WHERE transport = $1 AND id = $2 AND node = $3`, transport, id, node)
	if err != nil && !errors.Is(err, persistence.ErrClosed) {
		return s.dbErr("deleting session "+on(node, transport, id), err)
	}
	return err
}

func (s *Store) listSessions(ctx context.Context, node, transport string, fn func(id string, value []byte) error) error {
	if err := persistence.ValidateID(transport); err != nil {
		return err
	}
	if node != "" {
		if err := persistence.ValidateID(node); err != nil {
			return err
		}
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
	what := "listing the sessions of " + transport
	if node != "" {
		what += " of node " + strconv.Quote(node)
	}
	for {
		rows, err := s.pool.Query(ctx, `SELECT id, value FROM sessions WHERE node = $1 AND transport = $2 AND id > $3 ORDER BY id LIMIT $4`, node, transport, after, pageRows)
		if err != nil {
			return s.dbErr(what, err)
		}
		page, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (session, error) {
			var x session
			err := row.Scan(&x.id, &x.value)
			return x, err
		})
		if err != nil {
			return s.dbErr(what, err)
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
