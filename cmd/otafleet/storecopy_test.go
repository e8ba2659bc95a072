package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/persistence/pebblestore"
	"github.com/otafleet/otafleet/persistence/pgstore"
	"github.com/otafleet/otafleet/transport/download"
)

// fillStore writes a bit of everything into s: products, devices with
// secrets and PSKs (more than a batch), a group, a package with a file of
// several chunks, tasks, streams with more events and records than a
// batch, a snapshot, active marks and sessions of two transports.
func fillStore(t *testing.T, s persistence.Store) {
	t.Helper()
	ctx := context.Background()
	created := time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.PutProduct(ctx, persistence.Product{ID: "mqtt", Name: "meter", Protocol: persistence.ProtocolMQTT, Created: created}))
	must(s.PutProduct(ctx, persistence.Product{ID: "nb", Name: "nb", Protocol: persistence.ProtocolLWM2M, LwM2MSecurity: persistence.LwM2MPSK, SoftwarePCP: true, Created: created}))
	var ds []persistence.Device
	for i := range 1200 {
		d := persistence.Device{ID: fmt.Sprintf("m-%04d", i), ProductID: "mqtt", Secret: fmt.Sprintf("secret-%d", i), Created: created}
		if i%2 == 1 {
			d = persistence.Device{ID: fmt.Sprintf("n-%04d", i), ProductID: "nb", PSK: []byte(fmt.Sprintf("psk-%d", i)), Created: created}
		}
		ds = append(ds, d)
	}
	must(s.CreateDevices(ctx, ds))
	must(s.PutGroup(ctx, persistence.Group{ID: "g", Name: "all", DeviceIDs: []string{"m-0000", "n-0001", "gone"}, Created: created}))
	data := bytes.Repeat([]byte("firmware 2.0 "), 30000) // 390 kB: 6 chunks
	n, sum, err := s.WriteBlob(ctx, "pkg-1", bytes.NewReader(data), 1<<20)
	must(err)
	must(s.PutPackage(ctx, persistence.Package{ID: "pkg-1", ProductID: "mqtt", Type: persistence.PackageFirmware, Version: "2.0",
		SourceVersions: []string{"1.0"}, FileName: "fw.bin", Size: n, SHA256: sum, Created: created}))
	must(s.PutTask(ctx, persistence.TaskRecord{ID: "task-1", Name: "upgrade", PackageID: "pkg-1", Created: created}))
	yes := true
	ev := func(n int) persistence.Event {
		return persistence.Event{Type: persistence.EventTypeDevice, Version: 1, At: int64(n) * 1e9, Payload: []byte(fmt.Sprintf("event-%d", n))}
	}
	var evs []persistence.Event
	for i := range 1234 {
		evs = append(evs, ev(i))
	}
	task := persistence.Stream{Kind: persistence.KindTask, ID: "task-1"}
	var recs []persistence.Record
	for i := range 700 {
		recs = append(recs, persistence.Record{Key: []byte(fmt.Sprintf("dev/%04d", i)), Type: persistence.RecordTypeState, Version: 1, Payload: []byte{byte(i)}})
	}
	if _, err := s.Append(ctx, persistence.Append{Stream: task, Events: evs, Records: recs, Active: &yes}); err != nil {
		t.Fatal(err)
	}
	must(s.SaveSnapshot(ctx, task, persistence.Snapshot{Seq: 1000, Type: persistence.SnapshotTypeState, Version: 1, Payload: []byte("state at 1000")}))
	for i := range 30 {
		st := persistence.Stream{Kind: persistence.KindDevice, ID: ds[i].ID}
		a := persistence.Append{Stream: st, Events: evs[:i+1]}
		if i%3 == 0 {
			a.Active = &yes
		}
		if _, err := s.Append(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	cell := persistence.Stream{Kind: persistence.KindCell, ID: "cell-1"}
	if _, err := s.Append(ctx, persistence.Append{Stream: cell, Records: recs[:3]}); err != nil {
		t.Fatal(err)
	}
	must(s.PutSession(ctx, "lwm2m", "n-0001", []byte("registration")))
	must(s.PutSession(ctx, "download", "h1", []byte("grant")))
}

// sameStores compares a and b through the interfaces: every record,
// credential, blob byte, event, snapshot, record, mark and session.
func sameStores(t *testing.T, a, b copyStore) {
	t.Helper()
	ctx := context.Background()
	eq := func(what string, x, y any) {
		t.Helper()
		if !reflect.DeepEqual(x, y) {
			t.Fatalf("%s differ:\n source %v\n copy   %v", what, x, y)
		}
	}
	list := func(s copyStore) (ps []persistence.Product, ds []persistence.Device, gs []persistence.Group, ks []persistence.Package, ts []persistence.TaskRecord) {
		var err error
		if ps, err = s.ListProducts(ctx, "", 1000); err != nil {
			t.Fatal(err)
		}
		for after := ""; ; {
			page, err := s.ListDevices(ctx, after, 1000)
			if err != nil {
				t.Fatal(err)
			}
			ds = append(ds, page...)
			if len(page) < 1000 {
				break
			}
			after = page[len(page)-1].ID
		}
		if gs, err = s.ListGroups(ctx, "", 1000); err != nil {
			t.Fatal(err)
		}
		if ks, err = s.ListPackages(ctx, "", 1000); err != nil {
			t.Fatal(err)
		}
		if ts, err = s.ListTasks(ctx, "", 1000); err != nil {
			t.Fatal(err)
		}
		return
	}
	pa, da, ga, ka, ta := list(a)
	pb, db, gb, kb, tb := list(b)
	eq("products", pa, pb)
	eq("devices", da, db)
	eq("groups", ga, gb)
	eq("packages", ka, kb)
	eq("tasks", ta, tb)
	for _, d := range da {
		ca, err := a.DeviceCredentials(ctx, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		cb, err := b.DeviceCredentials(ctx, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		eq("credentials of "+d.ID, ca, cb)
	}
	blobs := func(s copyStore) map[string][]byte {
		m := map[string][]byte{}
		if err := s.Blobs(ctx, func(id string) error {
			bl, err := s.OpenBlob(ctx, id)
			if err != nil {
				return err
			}
			defer bl.Close()
			m[id], err = io.ReadAll(bl)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return m
	}
	eq("blobs", blobs(a), blobs(b))
	type stream struct {
		events  []persistence.Event
		snap    persistence.Snapshot
		records []persistence.Record
	}
	journal := func(s copyStore) map[persistence.Stream]stream {
		m := map[persistence.Stream]stream{}
		if err := s.Streams(ctx, func(st persistence.Stream) error {
			var x stream
			if err := s.Load(ctx, st, 0, func(e persistence.Event) error { x.events = append(x.events, e); return nil }); err != nil {
				return err
			}
			var err error
			if x.snap, _, err = s.LoadSnapshot(ctx, st); err != nil {
				return err
			}
			if err := s.LoadRecords(ctx, st, func(r persistence.Record) error { x.records = append(x.records, r); return nil }); err != nil {
				return err
			}
			m[st] = x
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for _, kind := range journalKinds {
			if err := s.Active(ctx, kind, func(id string) error {
				st := persistence.Stream{Kind: kind, ID: id}
				m[persistence.Stream{Kind: "active " + kind, ID: id}] = m[st]
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		return m
	}
	ja, jb := journal(a), journal(b)
	if len(ja) == 0 {
		t.Fatal("the source has no journal")
	}
	eq("journals", ja, jb)
	sessions := func(s copyStore) map[string]string {
		m := map[string]string{}
		if err := s.SessionTransports(ctx, func(tr string) error {
			return s.ListSessions(ctx, tr, func(id string, v []byte) error { m[tr+"/"+id] = string(v); return nil })
		}); err != nil {
			t.Fatal(err)
		}
		return m
	}
	eq("sessions", sessions(a), sessions(b))
}

// runCLI runs the command line in this process; it returns the exit code,
// stdout and stderr.
func runCLI(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// newPebble names a new Pebble store folder.
func newPebble(t *testing.T) string { return "pebble:" + filepath.Join(t.TempDir(), "new") }

// TestStoreCopy: store copy moves a Pebble store that keeps its own seal
// key into PostgreSQL under a key file, and that back into a new Pebble
// store under another key file; each copy holds what its source holds, and
// the Pebble source is left as it was. A target that holds anything is
// refused.
func TestStoreCopy(t *testing.T) {
	t.Setenv(envSealKeyFile, "")
	ctx := context.Background()
	srcDir := filepath.Join(t.TempDir(), "store")
	src, err := pebblestore.Open(srcDir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	fillStore(t, src)
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	dsn := pgtest.NewDatabase(t)
	keyHex := strings.Repeat("7a", 32)
	key := writeKey(t, "seal.key", keyHex+"\n", 0o600)
	// The secrets of the node that served the source, in its data folder:
	// a cluster on the target takes them.
	dataDir := filepath.Dir(srcDir)
	token := strings.Repeat("5e", 32)
	dlKey := strings.Repeat("d1", 32)
	for name, v := range map[string]string{"api-token": token + "\n", "download-key": dlKey + "\n"} {
		if err := os.WriteFile(filepath.Join(dataDir, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := download.LoadOrCreateCert(dataDir, nil); err != nil {
		t.Fatal(err)
	}
	tlsPair, _ := dataDirSecret(dataDir, secretDownloadTLS)

	code, out, errs := runCLI("store", "copy", "--from", "pebble:"+srcDir, "--to", dsn, "--seal-key-file", key)
	if code != 0 {
		t.Fatalf("store copy: exit %d\n%s%s", code, out, errs)
	}
	t.Log(strings.TrimSpace(out))
	for _, want := range []string{"and verified", "2 products", "1200 devices (600 secrets and 600 PSKs re-sealed)", "1 package files (390000 bytes, SHA-256 checked)",
		"31 journal streams (1699 events, 1 snapshots, 703 records, 11 active)", "2 sessions", "--seal-key-file " + key,
		"shared secrets copied from the data folder " + dataDir + " and verified, sealed under the target's key: api-token, download-key, download-tls"} {
		if !strings.Contains(out, want) {
			t.Errorf("store copy's summary lacks %q:\n%s", want, out)
		}
	}
	src, err = pebblestore.Open(srcDir, pebblestore.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("the source after the copy: %v", err)
	}
	t.Cleanup(func() { _ = src.Close() })
	rawKey := bytes.Repeat([]byte{0x7a}, 32)
	pg, err := pgstore.Open(ctx, dsn, pgstore.Options{SealKey: rawKey})
	if err != nil {
		t.Fatal(err)
	}
	sameStores(t, src, pg)
	wantSecrets := map[string][]byte{"api-token": []byte(token), "download-key": bytes.Repeat([]byte{0xd1}, 32), "download-tls": tlsPair}
	secretsOf := func(s persistence.SharedSecrets) map[string][]byte {
		t.Helper()
		got := map[string][]byte{}
		if err := s.ListSharedSecrets(ctx, func(name string, v []byte) error { got[name] = bytes.Clone(v); return nil }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := secretsOf(pg); !maps.EqualFunc(got, wantSecrets, bytes.Equal) {
		t.Fatalf("the target's shared secrets: %q, want the source data folder's", slices.Sorted(maps.Keys(got)))
	}
	pg.Close()

	// PostgreSQL back to a new Pebble store under another key.
	key2 := writeKey(t, "seal2.key", strings.Repeat("2b", 32), 0o600)
	backDir := filepath.Join(t.TempDir(), "back")
	code, out, errs = runCLI("store", "copy", "--from", dsn, "--from-seal-key-file", key, "--to", "pebble:"+backDir, "--seal-key-file", key2)
	if code != 0 {
		t.Fatalf("store copy back to Pebble: exit %d\n%s%s", code, out, errs)
	}
	back, err := pebblestore.Open(backDir, pebblestore.Options{ReadOnly: true, SealKey: bytes.Repeat([]byte{0x2b}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	sameStores(t, src, back)
	back.Close()
	src.Close()
	if !strings.Contains(out, "are not copied: a Pebble store's node keeps its own in its data folder") {
		t.Errorf("store copy to Pebble says nothing of the shared secrets it leaves:\n%s", out)
	}

	// PostgreSQL to PostgreSQL under another key: the shared secrets are
	// re-sealed, and each session stays with the node that holds it.
	pg, err = pgstore.Open(ctx, dsn, pgstore.Options{SealKey: rawKey})
	if err != nil {
		t.Fatal(err)
	}
	if err := pg.NodeSessions("10.0.0.1:7001").PutSession(ctx, "lwm2m", "n-0003", []byte("reg")); err != nil {
		t.Fatal(err)
	}
	pg.Close()
	dsn2 := pgtest.NewDatabase(t)
	code, out, errs = runCLI("store", "copy", "--from", dsn, "--from-seal-key-file", key, "--to", dsn2, "--seal-key-file", key2)
	if code != 0 || !strings.Contains(out, "3 sessions") || !strings.Contains(out, "shared secrets copied from the source and verified") {
		t.Fatalf("store copy from PostgreSQL to PostgreSQL: exit %d\n%s%s", code, out, errs)
	}
	pg2, err := pgstore.Open(ctx, dsn2, pgstore.Options{SealKey: bytes.Repeat([]byte{0x2b}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	if got := secretsOf(pg2); !maps.EqualFunc(got, wantSecrets, bytes.Equal) {
		t.Fatalf("the shared secrets re-sealed: %q, want the source's", slices.Sorted(maps.Keys(got)))
	}
	if v, err := pg2.NodeSessions("10.0.0.1:7001").GetSession(ctx, "lwm2m", "n-0003"); err != nil || string(v) != "reg" {
		t.Fatalf("node 10.0.0.1:7001's session in the copy: %q, %v", v, err)
	}
	pg2.Close()

	failServe(t, "it keeps its own seal key: copy it without --from-seal-key-file", "store", "copy", "--from", "pebble:"+srcDir, "--from-seal-key-file", key, "--to", newPebble(t))

	// Targets that hold something.
	failServe(t, "is not empty (it holds products)", "store", "copy", "--from", "pebble:"+srcDir, "--to", dsn, "--seal-key-file", key)
	failServe(t, "was set up with another seal key than --seal-key-file", "store", "copy", "--from", "pebble:"+srcDir, "--to", dsn, "--seal-key-file", key2)
	failServe(t, "is not empty: store copy only fills a new, empty folder", "store", "copy", "--from", dsn, "--from-seal-key-file", key, "--to", "pebble:"+backDir)
}

// TestStoreCopyErrors: bad flags are usage errors (exit 2); a store that
// cannot be read, a wrong key, an unreachable database or one of a newer
// schema stop the copy with one line (exit 1).
func TestStoreCopyErrors(t *testing.T) {
	t.Setenv(envSealKeyFile, "")
	key := writeKey(t, "k", strings.Repeat("ab", 32), 0o600)
	dataDir := t.TempDir()
	storeDir := filepath.Join(dataDir, "store")
	s, err := pebblestore.Open(storeDir, pebblestore.Options{SealKey: bytes.Repeat([]byte{0xab}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutProduct(context.Background(), persistence.Product{ID: "p", Protocol: persistence.ProtocolMQTT}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	newDir := func() string { return newPebble(t) }
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--from", "mysql://x", "--to", newDir()}, "--from must be pebble:DIR or a postgres:// URL"},
		{[]string{"--from", "pebble:" + storeDir, "--to", "postgres://u:hunter2@[::1/db", "--seal-key-file", key}, "--to is not a valid postgres:// URL"},
		{[]string{"--from", "pebble:" + storeDir, "--to", "postgres://u:hunter2@h/db"}, "needs --seal-key-file"},
		{[]string{"--from", "postgres://u:hunter2@h/db", "--to", newDir()}, "needs --from-seal-key-file"},
		{[]string{"--from", "pebble:" + storeDir, "--to", "pebble:" + storeDir}, "name the same store"},
		{[]string{"--to", newDir()}, `"from" not set`},
	} {
		code, _, errs := runCLI(append([]string{"store", "copy"}, c.args...)...)
		if code != exitUsage || !strings.Contains(errs, c.want) || strings.Contains(errs, "hunter2") {
			t.Errorf("store copy %q: exit %d, stderr %q; want %d and %q", c.args, code, errs, exitUsage, c.want)
		}
	}
	failServe(t, "sealed with a key kept outside it: give that key file as --from-seal-key-file", "store", "copy", "--from", "pebble:"+storeDir, "--to", newDir())
	other := writeKey(t, "other", strings.Repeat("cd", 32), 0o600)
	failServe(t, "--from-seal-key-file is not the key it is sealed with", "store", "copy", "--from", "pebble:"+storeDir, "--from-seal-key-file", other, "--to", newDir())
	failServe(t, "the store of a data folder is its store/ folder", "store", "copy", "--from", "pebble:"+dataDir, "--from-seal-key-file", key, "--to", newDir())
	failServe(t, "the target postgres://u:xxxxx@127.0.0.1:1/db", "store", "copy", "--from", "pebble:"+storeDir, "--from-seal-key-file", key,
		"--to", "postgres://u:hunter2@127.0.0.1:1/db?sslmode=disable&connect_timeout=5", "--seal-key-file", key)

	dsn := pgtest.NewDatabase(t)
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if code, out, errs := runCLI("store", "migrate", "--store", dsn); code != 0 {
		t.Fatalf("store migrate: %d %s %s", code, out, errs)
	}
	if _, err := conn.Exec(context.Background(), `INSERT INTO `+pgstore.SchemaTable+` (version_id, is_applied) VALUES (999, true)`); err != nil {
		t.Fatal(err)
	}
	failServe(t, "schema version 999", "store", "copy", "--from", "pebble:"+storeDir, "--from-seal-key-file", key, "--to", dsn, "--seal-key-file", key)
	if _, err := os.Stat(storeDir); err != nil {
		t.Fatal(err)
	}
}

// TestStoreCopyVerify: the verification's counts and digests see a copy
// that lacks an event, a changed credential or a changed session.
func TestStoreCopyVerify(t *testing.T) {
	ctx := context.Background()
	src, dst := memstore.New(), memstore.New()
	fillStore(t, src)
	if err := copyWhole(ctx, src, dst); err != nil {
		t.Fatal(err)
	}
	sameStores(t, src, dst)
	want, err := countStore(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	got, err := countStore(ctx, dst)
	if err != nil || want.diff(got) != "" {
		t.Fatalf("a faithful copy: %v, diff %q", err, want.diff(got))
	}
	if _, err := dst.Append(ctx, persistence.Append{Stream: persistence.Stream{Kind: persistence.KindDevice, ID: "m-0000"}, Expected: 1,
		Events: []persistence.Event{{Type: 1, Payload: []byte("x")}}}); err != nil {
		t.Fatal(err)
	}
	if err := dst.PutDevice(ctx, persistence.Device{ID: "m-0002", ProductID: "mqtt", Secret: "changed"}); err != nil {
		t.Fatal(err)
	}
	got, err = countStore(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	d := want.diff(got)
	for _, w := range []string{"events: 1699 in the source, 1700 in the copy", "device credentials differ"} {
		if !strings.Contains(d, w) {
			t.Errorf("diff %q lacks %q", d, w)
		}
	}
}
