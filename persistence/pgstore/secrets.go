package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/otafleet/otafleet/persistence"
)

var _ persistence.SharedSecrets = (*Store)(nil)

// SharedSecret implements persistence.SharedSecrets: a secret missing is
// inserted with ON CONFLICT DO NOTHING and read back, so that of nodes
// starting at once the first insert wins and every node reads its value.
func (s *Store) SharedSecret(ctx context.Context, name string, create func() ([]byte, error)) ([]byte, error) {
	if err := persistence.ValidateID(name); err != nil {
		return nil, fmt.Errorf("shared secret: %w", err)
	}
	v, err := s.readSecret(ctx, name)
	if !errors.Is(err, persistence.ErrNotFound) {
		return v, err
	}
	plain, err := create()
	if err != nil {
		return nil, fmt.Errorf("pgstore: creating the shared secret %s: %w", name, err)
	}
	if len(plain) == 0 {
		return nil, fmt.Errorf("%w: pgstore: the shared secret %s is empty", persistence.ErrInvalid, name)
	}
	sealed, err := s.sealer.Seal(plain, persistence.SharedSecretLabel(name))
	if err != nil {
		return nil, err
	}
	if err := s.writeSecret(ctx, name, sealed, `INSERT INTO secrets (name, sealed) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`); err != nil {
		return nil, err
	}
	return s.readSecret(ctx, name)
}

// PutSharedSecret implements persistence.SharedSecrets.
func (s *Store) PutSharedSecret(ctx context.Context, name string, value []byte) error {
	if err := persistence.ValidateID(name); err != nil {
		return fmt.Errorf("shared secret: %w", err)
	}
	if len(value) == 0 {
		return fmt.Errorf("%w: pgstore: the shared secret %s is empty", persistence.ErrInvalid, name)
	}
	sealed, err := s.sealer.Seal(value, persistence.SharedSecretLabel(name))
	if err != nil {
		return err
	}
	return s.writeSecret(ctx, name, sealed, `INSERT INTO secrets (name, sealed) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed`)
}

// ListSharedSecrets implements persistence.SharedSecrets. The secrets are
// few (a handful of names): one query.
func (s *Store) ListSharedSecrets(ctx context.Context, fn func(name string, value []byte) error) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	rows, err := s.pool.Query(ctx, `SELECT name, sealed FROM secrets ORDER BY name`)
	if err != nil {
		s.exit()
		return s.dbErr("listing the shared secrets", err)
	}
	type secret struct {
		name   string
		sealed []byte
	}
	all, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (secret, error) {
		var x secret
		err := row.Scan(&x.name, &x.sealed)
		return x, err
	})
	s.exit()
	if err != nil {
		return s.dbErr("listing the shared secrets", err)
	}
	for _, x := range all {
		plain, err := s.openSecret(x.name, x.sealed)
		if err != nil {
			return err
		}
		if err := fn(x.name, plain); err != nil {
			return err
		}
	}
	return nil
}

// readSecret reads and opens the secret name; ErrNotFound when there is
// none.
func (s *Store) readSecret(ctx context.Context, name string) ([]byte, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.exit()
	var sealed []byte
	err := s.pool.QueryRow(ctx, `SELECT sealed FROM secrets WHERE name = $1`, name).Scan(&sealed)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, notFound("shared secret", name)
	}
	if err != nil {
		return nil, s.dbErr("reading the shared secret "+name, err)
	}
	return s.openSecret(name, sealed)
}

// openSecret opens a stored secret; one that does not open is corrupt.
func (s *Store) openSecret(name string, sealed []byte) ([]byte, error) {
	plain, err := s.sealer.Open(sealed, persistence.SharedSecretLabel(name))
	if err == nil && len(plain) == 0 {
		err = errors.New("empty")
	}
	if err != nil {
		return nil, &persistence.CorruptError{Key: []byte("secrets/" + name), Reason: err.Error()}
	}
	return plain, nil
}

// writeSecret runs query (name, sealed), synced: a secret handed out (a
// token, a key that signs download tokens) must survive a crash.
func (s *Store) writeSecret(ctx context.Context, name string, sealed []byte, query string) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	if _, err := s.pool.Exec(ctx, query, name, sealed); err != nil {
		return s.dbErr("writing the shared secret "+name, err)
	}
	return nil
}
