package pgstore

import (
	"context"
	"crypto/hmac"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/otafleet/otafleet/persistence"
)

// resealPage is how many devices the re-seal reads and rewrites per
// statement.
const resealPage = 1000

// reseal re-seals every device's credentials and the shared secrets, sealed under oldKey, under
// newKey, and records newKey's check value: one transaction, so that a
// crash (of otafleet or of PostgreSQL) leaves the database all under the
// old key or all under the new one, and Open with the same keys starts
// over. The meta row is locked first, so that nodes starting together
// re-seal once (the others find the new check value and have nothing to
// do); the devices table is locked against writes for the duration.
func (s *Store) reseal(ctx context.Context, oldKey, newKey []byte) error {
	from, err := persistence.NewSealer(oldKey)
	if err != nil {
		return err
	}
	to, err := persistence.NewSealer(newKey)
	if err != nil {
		return err
	}
	n := 0
	err = s.tx(ctx, func(tx pgx.Tx) error {
		var stored []byte
		if err := tx.QueryRow(ctx, `SELECT value FROM meta WHERE name = 'seal_check' FOR UPDATE`).Scan(&stored); err != nil {
			return fmt.Errorf("pgstore: reading the seal key's check value: %w", err)
		}
		switch {
		case hmac.Equal(stored, persistence.SealCheck(newKey)):
			return nil // another node re-sealed it meanwhile
		case !hmac.Equal(stored, persistence.SealCheck(oldKey)):
			return fmt.Errorf("%w: the database's credentials are sealed with another key", ErrSealKey)
		}
		if _, err := tx.Exec(ctx, `LOCK TABLE devices IN SHARE ROW EXCLUSIVE MODE`); err != nil {
			return fmt.Errorf("pgstore: locking the devices to re-seal them: %w", err)
		}
		after := ""
		for {
			rows, err := tx.Query(ctx, `
				SELECT id, sealed_secret, sealed_psk FROM devices
				WHERE id > $1 AND (sealed_secret IS NOT NULL OR sealed_psk IS NOT NULL) ORDER BY id LIMIT $2`, after, resealPage)
			if err != nil {
				return fmt.Errorf("pgstore: reading the devices to re-seal: %w", err)
			}
			var ids []string
			var secrets, psks [][]byte
			var id string
			var secret, psk []byte
			_, err = pgx.ForEachRow(rows, []any{&id, &secret, &psk}, func() error {
				for _, c := range []struct {
					sealed *[]byte
					label  string
				}{{&secret, "secret/" + id}, {&psk, "psk/" + id}} {
					plain, err := from.Open(*c.sealed, c.label)
					if err != nil {
						return &persistence.CorruptError{Key: []byte("devices/" + id), Reason: err.Error() + " (the previous key)"}
					}
					if *c.sealed, err = to.Seal(plain, c.label); err != nil {
						return err
					}
				}
				ids, secrets, psks = append(ids, id), append(secrets, secret), append(psks, psk)
				return nil
			})
			if err != nil {
				return err
			}
			if len(ids) > 0 {
				if _, err := tx.Exec(ctx, `
					UPDATE devices SET sealed_secret = n.secret, sealed_psk = n.psk
					FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS n(id, secret, psk) WHERE devices.id = n.id`,
					ids, secrets, psks); err != nil {
					return fmt.Errorf("pgstore: re-sealing devices: %w", err)
				}
				n += len(ids)
			}
			if len(ids) < resealPage {
				break
			}
			after = ids[len(ids)-1]
		}
		if err := resealSecrets(ctx, tx, from, to); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE meta SET value = $1 WHERE name = 'seal_check'`, persistence.SealCheck(newKey))
		return err
	})
	if err != nil {
		var ce *persistence.CorruptError
		if errors.As(err, &ce) || errors.Is(err, ErrSealKey) {
			return err
		}
		return s.dbErr("re-sealing the credentials under the new seal key", err)
	}
	s.log.Info("device credentials re-sealed under the new seal key", "devices", n, "from", "the previous key")
	return nil
}

// resealSecrets re-seals the shared secrets (a handful) in tx, which holds
// the seal check's row lock.
func resealSecrets(ctx context.Context, tx pgx.Tx, from, to persistence.Sealer) error {
	rows, err := tx.Query(ctx, `SELECT name, sealed FROM secrets ORDER BY name FOR UPDATE`)
	if err != nil {
		return fmt.Errorf("pgstore: reading the shared secrets to re-seal: %w", err)
	}
	var names []string
	var sealed [][]byte
	var name string
	var v []byte
	_, err = pgx.ForEachRow(rows, []any{&name, &v}, func() error {
		plain, err := from.Open(v, persistence.SharedSecretLabel(name))
		if err != nil {
			return &persistence.CorruptError{Key: []byte("secrets/" + name), Reason: err.Error() + " (the previous key)"}
		}
		n, err := to.Seal(plain, persistence.SharedSecretLabel(name))
		if err != nil {
			return err
		}
		names, sealed = append(names, name), append(sealed, n)
		return nil
	})
	if err != nil || len(names) == 0 {
		return err
	}
	if _, err := tx.Exec(ctx, `
		UPDATE secrets SET sealed = n.sealed
		FROM unnest($1::text[], $2::bytea[]) AS n(name, sealed) WHERE secrets.name = n.name`, names, sealed); err != nil {
		return fmt.Errorf("pgstore: re-sealing the shared secrets: %w", err)
	}
	return nil
}
