package pgstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pgstore"
)

// pgtestUnique numbers the roles the tests create (roles are server-wide).
var roles atomic.Int64

func pgtestUnique() int64 { return roles.Add(1) }

func open(t *testing.T, dsn string, key []byte) (*pgstore.Store, error) {
	t.Helper()
	s, err := pgstore.Open(context.Background(), dsn, pgstore.Options{SealKey: key, Logger: testLogger(t)})
	if err == nil {
		t.Cleanup(func() { _ = s.Close() })
	}
	return s, err
}

func execSQL(t *testing.T, dsn, sql string, args ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestSchemaVersions: a new database is migrated to the newest version, an
// up-to-date one is left alone, and one of a newer schema is refused.
func TestSchemaVersions(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	v, err := pgstore.Migrate(ctx, pool, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if v.Before != 0 || v.After != v.Latest || v.Latest < 1 {
		t.Fatalf("Migrate of a new database = %+v, want from 0 to the latest", v)
	}
	again, err := pgstore.Migrate(ctx, pool, testLogger(t))
	if err != nil || again.Before != v.Latest || again.After != v.Latest {
		t.Fatalf("Migrate of an up-to-date database = %+v, %v", again, err)
	}
	if _, err := open(t, dsn, testKey); err != nil {
		t.Fatal(err)
	}

	newer := v.Latest + 1
	execSQL(t, dsn, `INSERT INTO `+pgstore.SchemaTable+` (version_id, is_applied) VALUES ($1, true)`, newer)
	_, err = open(t, dsn, testKey)
	if !errors.Is(err, pgstore.ErrSchema) || !strings.Contains(err.Error(), fmt.Sprint(newer)) {
		t.Fatalf("Open of a database at schema version %d: %v, want ErrSchema naming the version", newer, err)
	}
	if _, err := pgstore.Migrate(ctx, pool, testLogger(t)); !errors.Is(err, pgstore.ErrSchema) {
		t.Fatalf("Migrate of a newer database: %v, want ErrSchema", err)
	}
}

// TestConcurrentOpen: stores opening a new database together migrate it
// once (goose's advisory lock) and all open.
func TestConcurrentOpen(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			s, err := pgstore.Open(context.Background(), dsn, pgstore.Options{SealKey: testKey, Logger: testLogger(t)})
			if err == nil {
				err = s.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Open %d: %v", i, err)
		}
	}
}

// TestSealKey: the key is required and must be the database's.
func TestSealKey(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	s, err := open(t, dsn, testKey)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.PutProduct(ctx, persistence.Product{ID: "p", Protocol: persistence.ProtocolMQTT}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutDevice(ctx, persistence.Device{ID: "d", ProductID: "p", Secret: "secret"}); err != nil {
		t.Fatal(err)
	}
	for _, key := range [][]byte{nil, testKey[:16], bytes.Repeat([]byte{8}, 32)} {
		if _, err := open(t, dsn, key); !errors.Is(err, pgstore.ErrSealKey) {
			t.Fatalf("Open with a %d-byte other key: %v, want ErrSealKey", len(key), err)
		}
	}
	// The database holds no key and no credential in clear.
	ctx2 := context.Background()
	conn, err := pgx.Connect(ctx2, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx2)
	var dump []byte
	if err := conn.QueryRow(ctx2, `SELECT string_agg(coalesce(sealed_secret, ''), '') || (SELECT string_agg(value, '') FROM meta) FROM devices`).Scan(&dump); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(dump, []byte("secret")) || bytes.Contains(dump, testKey) {
		t.Fatal("the database holds the secret or the seal key in clear")
	}
	if creds, err := s.DeviceCredentials(ctx, "d"); err != nil || creds.Secret != "secret" {
		t.Fatalf("DeviceCredentials = %+v, %v", creds, err)
	}
}

// TestBadDSN: a malformed connection string is ErrInvalid and does not
// echo a password; an unreachable server fails Open.
func TestBadDSN(t *testing.T) {
	_, err := pgstore.Open(context.Background(), "postgres://u:hunter2@[::1", pgstore.Options{SealKey: testKey})
	if !errors.Is(err, persistence.ErrInvalid) || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("Open of a malformed URL: %v, want ErrInvalid without the password", err)
	}
	_, err = pgstore.Open(context.Background(), "postgres://u:hunter2@127.0.0.1:1/db?connect_timeout=5", pgstore.Options{SealKey: testKey})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("Open of an unreachable server: %v, want an error without the password", err)
	}
}

// TestReadOnlyUser: a user that may not create the tables (a new
// database) or write them (a migrated one) fails Open with ErrPermission.
func TestReadOnlyUser(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	role := fmt.Sprintf("reader_%d_%d", os.Getpid(), pgtestUnique())
	execSQL(t, dsn, `CREATE ROLE `+role+` LOGIN`)
	roDSN := strings.Replace(dsn, "postgres@", role+"@", 1)
	if _, err := open(t, roDSN, testKey); !errors.Is(err, pgstore.ErrPermission) {
		t.Fatalf("Open of a new database by a read-only user: %v, want ErrPermission", err)
	}
	if _, err := open(t, dsn, testKey); err != nil { // the owner migrates it
		t.Fatal(err)
	}
	execSQL(t, dsn, `GRANT SELECT ON ALL TABLES IN SCHEMA public TO `+role)
	_, err := open(t, roDSN, testKey)
	if !errors.Is(err, pgstore.ErrPermission) {
		t.Fatalf("Open of a migrated database by a read-only user: %v, want ErrPermission", err)
	}
	t.Log(err)
}

// TestSharedSecretsTwoStores: two stores on one database, opened at once
// as two nodes starting together, create the shared secrets once and read
// the same values; a value sealed under another key is corrupt, not
// replaced.
func TestSharedSecretsTwoStores(t *testing.T) {
	ctx := context.Background()
	dsn := migratedDatabase(t)
	stores := make([]*pgstore.Store, 2)
	errs := make([]error, 2)
	got := make([][]byte, 2)
	var wg sync.WaitGroup
	for i := range stores {
		wg.Go(func() {
			if stores[i], errs[i] = pgstore.Open(ctx, dsn, pgstore.Options{SealKey: testKey, Logger: testLogger(t)}); errs[i] != nil {
				return
			}
			got[i], errs[i] = stores[i].SharedSecret(ctx, "download-key", func() ([]byte, error) { return []byte(fmt.Sprintf("key-of-%d", i)), nil })
		})
	}
	wg.Wait()
	for i, s := range stores {
		if s != nil {
			t.Cleanup(func() { _ = s.Close() })
		}
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
	}
	if !bytes.Equal(got[0], got[1]) {
		t.Fatalf("two nodes got the download keys %q and %q, want one", got[0], got[1])
	}
	var sealed []byte
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, `SELECT sealed FROM secrets WHERE name = 'download-key'`).Scan(&sealed); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, got[0]) {
		t.Fatalf("the database holds the secret in the clear: %q", sealed)
	}
	// Moved to another name, a sealed value does not open (the label).
	if _, err := conn.Exec(ctx, `INSERT INTO secrets (name, sealed) VALUES ('api-token', $1)`, sealed); err != nil {
		t.Fatal(err)
	}
	if _, err := stores[1].SharedSecret(ctx, "api-token", func() ([]byte, error) { return []byte("new"), nil }); !errors.Is(err, persistence.ErrCorrupt) {
		t.Fatalf("a secret sealed for another name: %v, want ErrCorrupt", err)
	}
}

// TestSealKeyRotation: SealKey with PreviousSealKey re-seals a database
// sealed under the previous key, in one transaction: a re-seal that fails
// midway leaves everything under the old key; afterwards only the new key
// opens it, and the options may stay set.
func TestSealKeyRotation(t *testing.T) {
	ctx := context.Background()
	oldKey, newKey, other := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{3}, 32)
	dsn := pgtest.NewDatabase(t)
	openKeys := func(key, prev []byte) (*pgstore.Store, error) {
		s, err := pgstore.Open(ctx, dsn, pgstore.Options{SealKey: key, PreviousSealKey: prev, Logger: testLogger(t)})
		if err == nil {
			t.Cleanup(func() { _ = s.Close() })
		}
		return s, err
	}
	s, err := openKeys(oldKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutProduct(ctx, persistence.Product{ID: "p", Protocol: persistence.ProtocolLWM2M}); err != nil {
		t.Fatal(err)
	}
	var ds []persistence.Device
	for i := range 2500 { // several pages
		d := persistence.Device{ID: fmt.Sprintf("d-%04d", i), ProductID: "p"}
		switch i % 3 {
		case 0:
			d.Secret = "secret-" + d.ID
		case 1:
			d.PSK = []byte("psk-" + d.ID)
		}
		ds = append(ds, d)
	}
	if err := s.CreateDevices(ctx, ds); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSharedSecret(ctx, "api-token", []byte("the-token")); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	want := func(s *pgstore.Store) {
		t.Helper()
		tok, err := s.SharedSecret(ctx, "api-token", func() ([]byte, error) { return []byte("another"), nil })
		if err != nil || string(tok) != "the-token" {
			t.Fatalf("the shared secret api-token = %q, %v; want the-token, re-sealed with the credentials", tok, err)
		}
		for _, d := range ds {
			c, err := s.DeviceCredentials(ctx, d.ID)
			if err != nil || c.Secret != d.Secret || !bytes.Equal(c.PSK, d.PSK) {
				t.Fatalf("DeviceCredentials(%s) = %+v, %v; want %q %q", d.ID, c, err, d.Secret, d.PSK)
			}
		}
	}

	for _, c := range []struct {
		name      string
		key, prev []byte
		want      error
	}{
		{"the new key alone", newKey, nil, pgstore.ErrSealKey},
		{"two wrong keys", newKey, other, pgstore.ErrSealKey},
		{"a short previous key", newKey, []byte("short"), persistence.ErrInvalid},
	} {
		if _, err := openKeys(c.key, c.prev); !errors.Is(err, c.want) {
			t.Fatalf("Open with %s: %v, want %v", c.name, err, c.want)
		}
	}

	// A value that does not open with the previous key stops the re-seal,
	// which leaves everything as it was.
	execSQL(t, dsn, `UPDATE devices SET sealed_secret = '\x00112233445566778899aabbccddeeff00112233445566778899' WHERE id = 'd-2400'`)
	if _, err := openKeys(newKey, oldKey); !errors.Is(err, persistence.ErrCorrupt) || !strings.Contains(err.Error(), "d-2400") {
		t.Fatalf("rotation over a corrupt value: %v, want a CorruptError naming d-2400", err)
	}
	if s, err = openKeys(oldKey, nil); err != nil {
		t.Fatalf("the old key after a failed rotation: %v", err)
	}
	if c, err := s.DeviceCredentials(ctx, "d-0003"); err != nil || c.Secret != "secret-d-0003" {
		t.Fatalf("after a failed rotation, d-0003 = %+v, %v", c, err)
	}
	_ = s.Close()
	execSQL(t, dsn, `DELETE FROM devices WHERE id = 'd-2400'`)
	ds = append(ds[:2400], ds[2401:]...)

	if s, err = openKeys(newKey, oldKey); err != nil {
		t.Fatalf("rotation: %v", err)
	}
	want(s)
	_ = s.Close()
	if _, err := openKeys(oldKey, nil); !errors.Is(err, pgstore.ErrSealKey) {
		t.Fatalf("Open with the old key after the rotation: %v, want ErrSealKey", err)
	}
	for _, prev := range [][]byte{oldKey, nil} {
		if s, err = openKeys(newKey, prev); err != nil {
			t.Fatal(err)
		}
		want(s)
		_ = s.Close()
	}
}
