package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/persistence/pgstore"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
)

// serveArgs are the flags of a serve that listens on the API only.
func serveArgs(dataDir string, extra ...string) []string {
	return append([]string{"serve", "--data-dir", dataDir, "--api-addr", "127.0.0.1:0", "--mqtt-addr", "", "--coap-addr", "", "--coaps-addr", "",
		"--download-addr", "", "--log-format", "json"}, extra...)
}

// TestStoreUsage: a malformed --store, or a PostgreSQL store without a
// seal key file, is a usage error (exit 2) that does not echo a password.
func TestStoreUsage(t *testing.T) {
	t.Setenv(envSealKeyFile, "")
	key := writeKey(t, "k", strings.Repeat("ab", 32)+"\n", 0o600)
	for _, tc := range []struct {
		store string
		extra []string
		want  string
	}{
		{"mysql://u@h/db", nil, "--store must be pebble:DIR or a postgres:// URL"},
		{"pebble:", nil, "pebble:DIR"},
		{"postgres://u:hunter2@[::1/db", []string{"--seal-key-file", key}, "not a valid postgres:// URL"},
		{"postgres://u:hunter2@h/db?sslmode=bogus", []string{"--seal-key-file", key}, "connection string"},
		{"postgres:///db", []string{"--seal-key-file", key}, "names no host"},
		{"postgres://u:hunter2@h/db", nil, "needs --seal-key-file"},
		{"postgres://u@h/db", []string{"--seal-key-file", key, "--verify-store"}, "--verify-store checks a Pebble store"},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), serveArgs(t.TempDir(), append([]string{"--store", tc.store}, tc.extra...)...), &out, &errb)
		if code != exitUsage || !strings.Contains(errb.String(), tc.want) || strings.Contains(errb.String(), "hunter2") {
			t.Errorf("--store %s: exit %d, stderr %q; want %d and %q, no password", tc.store, code, errb.String(), exitUsage, tc.want)
		}
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"bench", "--store", "mysql"}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "want pebble or postgres") {
		t.Errorf("bench --store mysql: exit %d, stderr %q; want %d", code, errb.String(), exitUsage)
	}
}

// failServe runs serve in this process, expecting it to fail at start
// with exit 1 and one error line that contains want.
func failServe(t *testing.T, want string, args ...string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	var errLines []string
	for _, l := range strings.Split(strings.TrimSpace(errb.String()), "\n") {
		if strings.HasPrefix(l, "otafleet:") {
			errLines = append(errLines, l)
		}
	}
	if code != 1 || len(errLines) != 1 || !strings.Contains(errLines[0], want) || strings.Contains(errb.String(), "hunter2") {
		t.Fatalf("serve %v: exit %d, error lines %q; want exit 1 and one line with %q (no password)\n%s", args, code, errLines, want, errb.String())
	}
	t.Log(errLines[0])
}

// TestServePostgres runs serve on PostgreSQL: the API writes into the
// database; another key, an unreachable server, a newer schema and a
// read-only user each stop serve at start with one clear line and exit 1.
func TestServePostgres(t *testing.T) {
	t.Setenv(envSealKeyFile, "")
	dsn := pgtest.NewDatabase(t)
	keyHex := strings.Repeat("c3", 32)
	key := writeKey(t, "k", keyHex+"\n", 0o600)
	dataDir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := sealServe(t, dataDir, func(api, token string) {
		products := otafleetv1connect.NewProductServiceClient(h2cClient(token), api)
		if _, err := products.CreateProduct(context.Background(), connect.NewRequest(&v1.CreateProductRequest{Name: "meter", Protocol: v1.Protocol_PROTOCOL_MQTT})); err != nil {
			t.Fatal(err)
		}
	}, "--store", dsn, "--seal-key-file", key)
	if err != nil {
		t.Fatalf("serve on PostgreSQL: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "store")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("serve on PostgreSQL made a Pebble store folder: %v", err)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM products WHERE name = 'meter'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("products named meter in the database: %d, %v", n, err)
	}

	other := writeKey(t, "other", strings.Repeat("d4", 32)+"\n", 0o600)
	failServe(t, "--seal-key-file is not the key the store is sealed with", serveArgs(t.TempDir(), "--store", dsn, "--seal-key-file", other)...)
	failServe(t, "store postgres://u:xxxxx@127.0.0.1:1/db", serveArgs(t.TempDir(), "--store", "postgres://u:hunter2@127.0.0.1:1/db?sslmode=disable", "--seal-key-file", key)...)
	pw := writeKey(t, "pw", "hunter2\n", 0o600)
	failServe(t, "store postgres://u@127.0.0.1:1/db", serveArgs(t.TempDir(), "--store", "postgres://u@127.0.0.1:1/db?sslmode=disable", "--seal-key-file", key, "--store-password-file", pw)...)
	failServe(t, "group and others must have no access to a password file", serveArgs(t.TempDir(), "--store", dsn, "--seal-key-file", key, "--store-password-file", writeKey(t, "pw-open", "hunter2\n", 0o644))...)

	role := fmt.Sprintf("serve_reader_%d", os.Getpid())
	if _, err := conn.Exec(ctx, `CREATE ROLE `+role+` LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO `+role); err != nil {
		t.Fatal(err)
	}
	failServe(t, "read-only", serveArgs(t.TempDir(), "--store", strings.Replace(dsn, "postgres@", role+"@", 1), "--seal-key-file", key)...)

	if _, err := conn.Exec(ctx, `INSERT INTO `+pgstore.SchemaTable+` (version_id, is_applied) VALUES (999, true)`); err != nil {
		t.Fatal(err)
	}
	failServe(t, "schema version 999", serveArgs(t.TempDir(), "--store", dsn, "--seal-key-file", key)...)
}

// TestStoreMigrate: `otafleet store migrate` migrates a new database,
// leaves an up-to-date one, refuses a newer one (exit 1) and a Pebble
// store (exit 2).
func TestStoreMigrate(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	for _, want := range []string{"schema version 0 -> 3", "schema version 3: up to date"} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), []string{"store", "migrate", "--store", dsn}, &out, &errb); code != 0 || !strings.Contains(out.String(), want) {
			t.Fatalf("store migrate: exit %d, stdout %q, stderr %q; want %q", code, out.String(), errb.String(), want)
		}
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"store", "migrate", "--store", "pebble:x"}, &out, &errb); code != exitUsage {
		t.Fatalf("store migrate of a Pebble store: exit %d (%s), want %d", code, errb.String(), exitUsage)
	}
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), `INSERT INTO `+pgstore.SchemaTable+` (version_id, is_applied) VALUES (7, true)`); err != nil {
		t.Fatal(err)
	}
	failServe(t, "schema version 7", "store", "migrate", "--store", dsn)
}

// TestStoreMigrateFromVersion2: `otafleet store migrate` upgrades a
// database that a build of schema version 2 wrote (streams with their head,
// last_seq) and keeps its journal: its streams, events and marks.
func TestStoreMigrateFromVersion2(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pgstore.MigrateTo(ctx, pool, slog.New(slog.DiscardHandler), 2); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO streams (kind, id, last_seq, active) VALUES ('d', 'a', 1, true);
		INSERT INTO events (kind, id, seq, body) VALUES ('d', 'a', 1, '\x00')`); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run(ctx, []string{"store", "migrate", "--store", dsn}, &out, &errb); code != 0 || !strings.Contains(out.String(), "schema version 2 -> 3") {
		t.Fatalf("store migrate: exit %d, stdout %q, stderr %q; want 2 -> 3", code, out.String(), errb.String())
	}
	var streams, active, events int
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM streams), (SELECT count(*) FROM streams WHERE active), (SELECT count(*) FROM events)`).Scan(&streams, &active, &events); err != nil {
		t.Fatal(err)
	}
	if streams != 1 || active != 1 || events != 1 {
		t.Fatalf("after the migration: %d streams (%d active), %d events; want 1 (1), 1", streams, active, events)
	}
}

// TestWithPasswordFile: --store-password-file puts the file's first line in
// the URL as the user's password, and refuses a file others may read, an
// empty one and a URL without a user, never quoting the password.
func TestWithPasswordFile(t *testing.T) {
	pw := writeKey(t, "pw", "s3cr:t/@x\nsecond line\n", 0o600)
	got, err := withPasswordFile("--store-password-file", "postgres://otafleet@db.example:5433/ota?sslmode=verify-full", pw)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(got)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := u.User.Password(); !ok || p != "s3cr:t/@x" || u.User.Username() != "otafleet" || u.Host != "db.example:5433" || u.Path != "/ota" || u.Query().Get("sslmode") != "verify-full" {
		t.Fatalf("URL with the password: %s", got)
	}
	if same, err := withPasswordFile("--store-password-file", "postgres://u@h/db", ""); err != nil || same != "postgres://u@h/db" {
		t.Fatalf("no file: %q, %v", same, err)
	}
	for _, c := range []struct{ dsn, file, want string }{
		{"postgres://u@h/db", writeKey(t, "open", "hunter2\n", 0o640), "mode 0640"},
		{"postgres://u@h/db", writeKey(t, "empty", "\nhunter2\n", 0o600), "no password on its first line"},
		{"postgres://h/db", pw, "names the user"},
		{"postgres://u@h/db", filepath.Join(t.TempDir(), "missing"), "no such file"},
	} {
		_, err := withPasswordFile("--store-password-file", c.dsn, c.file)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s with %s: %v, want an error with %q", c.dsn, c.file, err, c.want)
		}
	}
}
