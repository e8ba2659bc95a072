package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/spf13/cobra"

	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pebblestore"
	"github.com/otafleet/otafleet/persistence/pgstore"
)

// copyStore is a store that store copy reads or writes: every interface,
// and the listings that reach all of it.
type copyStore interface {
	persistence.Store
	persistence.Lister
}

// storeCopyCommand is `otafleet store copy`.
func storeCopyCommand(stdout, stderr io.Writer) *cobra.Command {
	var from, to, keyFile, fromKeyFile, fromPasswordFile, toPasswordFile, fromDataDir string
	cmd := &cobra.Command{
		Use:   "copy --from pebble:DIR --to postgres://... --seal-key-file FILE",
		Short: "Copy a whole store (journal, registry, package files, sessions) into a new, empty one, re-sealing device secrets and PSKs under --seal-key-file, and verify the copy",
		Long: `Copy a whole store into a new, empty one: the journal (every stream's events with
their sequence numbers, snapshots, records and active marks), the registry (products,
devices, groups, packages, tasks), the package files (streamed a chunk at a time) and the
transports' sessions (with the node that holds each), and the secrets the nodes of a
cluster share (API token, download token key, self-signed download certificate): from a
PostgreSQL source's store, or from a Pebble source's data folder (--from-data-dir), into a
PostgreSQL target. Stop the server that uses the source first.

Device secrets and PSKs are opened with the source's seal key (a Pebble store's own key, or
--from-seal-key-file if it was sealed with a key file; required for a PostgreSQL source) and
sealed again under --seal-key-file (required for a PostgreSQL target; for a Pebble target,
without it the new store keeps its own key). A target that holds anything is refused; a
copy that fails leaves a partial target, to be emptied (a new database, an empty folder)
before trying again. The copy is verified (counts, credentials, every package file's
SHA-256) and summarised; then start serve with --store and --seal-key-file naming the
target and the key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keyFile == "" {
				keyFile = os.Getenv(envSealKeyFile)
			}
			return runStoreCopy(cmd.Context(), storeCopyConfig{from: from, to: to, keyFile: keyFile, fromKeyFile: fromKeyFile, fromPasswordFile: fromPasswordFile, toPasswordFile: toPasswordFile, fromDataDir: fromDataDir}, stdout, stderr)
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "the store to copy: pebble:DIR (the store/ folder of serve's data folder) or postgres://USER@HOST[:PORT]/DATABASE?sslmode=... (a Pebble store is opened read-only; a database gets the schema migrations it lacks and is otherwise only read)")
	f.StringVar(&to, "to", "", "the new store: postgres://... (an empty database) or pebble:DIR (a new or empty folder)")
	f.StringVar(&keyFile, "seal-key-file", "", "the key file the copy's device secrets and PSKs are sealed under, as for serve (default $"+envSealKeyFile+"); required for a PostgreSQL target")
	f.StringVar(&fromKeyFile, "from-seal-key-file", "", "the key file the source is sealed with: needed for a PostgreSQL source, and for a Pebble store that serve ran with --seal-key-file")
	f.StringVar(&fromPasswordFile, "from-password-file", "", "with a postgres:// --from: a file (mode 0600) whose first line is the database user's password, as serve's --store-password-file")
	f.StringVar(&fromDataDir, "from-data-dir", "", "with a pebble: --from: the serve data folder whose api-token, download-key and self-signed download certificate a postgres:// --to takes as the cluster's shared secrets; default: the folder holding --from when --from is its store/ folder")
	f.StringVar(&toPasswordFile, "to-password-file", "", "with a postgres:// --to: a file (mode 0600) whose first line is the database user's password")
	_ = cmd.MarkFlagRequired("from")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

// storeCopyConfig is what store copy was given.
type storeCopyConfig struct {
	from, to, keyFile, fromKeyFile   string
	fromPasswordFile, toPasswordFile string
	fromDataDir                      string
}

func runStoreCopy(ctx context.Context, cfg storeCopyConfig, stdout, stderr io.Writer) error {
	from, err := parseStore(cfg.from)
	if err != nil || cfg.from == "" {
		return usageError(fmt.Errorf("--from %w", orMissing(err)))
	}
	to, err := parseStore(cfg.to)
	if err != nil || cfg.to == "" {
		return usageError(fmt.Errorf("--to %w", orMissing(err)))
	}
	switch {
	case from == to || (from.pebbleDir != "" && to.pebbleDir != "" && filepath.Clean(from.pebbleDir) == filepath.Clean(to.pebbleDir)):
		return usageError(errors.New("--from and --to name the same store"))
	case to.postgres != "" && cfg.keyFile == "":
		return usageError(fmt.Errorf("--to %s needs --seal-key-file (or $%s): the key that seals device secrets and PSKs never lives in the shared database", redactedDSN(to.postgres), envSealKeyFile))
	case from.postgres != "" && cfg.fromKeyFile == "":
		return usageError(fmt.Errorf("--from %s needs --from-seal-key-file, the key the database is sealed with", redactedDSN(from.postgres)))
	}
	if from.postgres, err = withPasswordFile("--from-password-file", from.postgres, cfg.fromPasswordFile); err != nil {
		return err
	}
	if to.postgres, err = withPasswordFile("--to-password-file", to.postgres, cfg.toPasswordFile); err != nil {
		return err
	}
	var key, fromKey []byte
	if cfg.keyFile != "" {
		if key, err = readSealKey("--seal-key-file", cfg.keyFile); err != nil {
			return err
		}
	}
	if cfg.fromKeyFile != "" {
		if fromKey, err = readSealKey("--from-seal-key-file", cfg.fromKeyFile); err != nil {
			return err
		}
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	src, srcName, err := openCopySource(ctx, from, fromKey, logger)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, dstName, err := openCopyTarget(ctx, to, key, logger)
	if err != nil {
		return err
	}
	defer dst.Close()
	if what, err := storeHolds(ctx, dst); err != nil {
		return fmt.Errorf("reading the target %s: %s", dstName, oneLine(err))
	} else if what != "" {
		return fmt.Errorf("the target %s is not empty (it holds %s): store copy only fills a new, empty store", dstName, what)
	}
	if err := copyWhole(ctx, src, dst); err != nil {
		return fmt.Errorf("copying %s to %s: %s", srcName, dstName, oneLine(err))
	}
	secretsNote, err := copySharedSecrets(ctx, src, from, cfg.fromDataDir, dst)
	if err != nil {
		return fmt.Errorf("copying the shared secrets of %s to %s: %s", srcName, dstName, oneLine(err))
	}
	want, err := countStore(ctx, src)
	if err != nil {
		return fmt.Errorf("verifying: reading the source %s: %s", srcName, oneLine(err))
	}
	got, err := countStore(ctx, dst)
	if err != nil {
		return fmt.Errorf("verifying: reading the target %s: %s", dstName, oneLine(err))
	}
	if diff := want.diff(got); diff != "" {
		return fmt.Errorf("verifying the copy in %s: %s", dstName, diff)
	}
	fmt.Fprintf(stdout, "copied %s to %s and verified: %s\n", srcName, dstName, got)
	if secretsNote != "" {
		fmt.Fprintln(stdout, secretsNote)
	}
	if key != nil {
		fmt.Fprintf(stdout, "device secrets and PSKs are sealed under %s: start serve with --store %s --seal-key-file %s\n", cfg.keyFile, storeArg(to), cfg.keyFile)
	} else {
		fmt.Fprintf(stdout, "device secrets and PSKs are sealed under a key the new store keeps: start serve with --store %s\n", storeArg(to))
	}
	return nil
}

// orMissing is err, or "is required" when the flag was empty.
func orMissing(err error) error {
	if err == nil {
		return errors.New("is required: pebble:DIR or a postgres:// URL")
	}
	return err
}

// storeArg is spec as --store takes it, without a password.
func storeArg(spec storeSpec) string {
	if spec.postgres != "" {
		return "'" + redactedDSN(spec.postgres) + "'"
	}
	return "pebble:" + spec.pebbleDir
}

// openCopySource opens the store to copy for reading: Pebble read-only
// (nothing in it changes), PostgreSQL under its key.
func openCopySource(ctx context.Context, spec storeSpec, key []byte, logger *slog.Logger) (copyStore, string, error) {
	if spec.postgres != "" {
		where := redactedDSN(spec.postgres)
		s, err := openCopyPostgres(ctx, spec.postgres, key, logger)
		if errors.Is(err, pgstore.ErrSealKey) {
			return nil, where, fmt.Errorf("the source %s: --from-seal-key-file is not the key it is sealed with", where)
		}
		if err != nil {
			return nil, where, fmt.Errorf("the source %s: %s", where, oneLine(err))
		}
		return s, where, nil
	}
	dir := spec.pebbleDir
	s, err := pebblestore.Open(dir, pebblestore.Options{ReadOnly: true, SealKey: key, Logger: logger})
	if err == nil {
		return s, "pebble:" + dir, nil
	}
	msg := oneLine(err)
	switch {
	case errors.Is(err, pebblestore.ErrSealKey) && key == nil:
		msg = "it is sealed with a key kept outside it: give that key file as --from-seal-key-file"
	case errors.Is(err, pebblestore.ErrOwnSealKey):
		msg = "it keeps its own seal key: copy it without --from-seal-key-file"
	case errors.Is(err, pebblestore.ErrSealKey):
		msg = "--from-seal-key-file is not the key it is sealed with"
	default:
		if st, serr := os.Stat(filepath.Join(dir, "store")); serr == nil && st.IsDir() {
			msg += fmt.Sprintf(" (the store of a data folder is its store/ folder: pebble:%s)", filepath.Join(dir, "store"))
		}
	}
	return nil, dir, fmt.Errorf("the source pebble:%s: %s", dir, msg)
}

// openCopyTarget opens (creating it) the store to copy into. A Pebble
// target must be a new or empty folder, so that no existing store is
// opened (and, with a key, re-sealed) by mistake.
func openCopyTarget(ctx context.Context, spec storeSpec, key []byte, logger *slog.Logger) (copyStore, string, error) {
	if spec.postgres != "" {
		where := redactedDSN(spec.postgres)
		s, err := openCopyPostgres(ctx, spec.postgres, key, logger)
		if errors.Is(err, pgstore.ErrSealKey) {
			return nil, where, fmt.Errorf("the target %s was set up with another seal key than --seal-key-file: store copy only fills a new, empty store", where)
		}
		if err != nil {
			return nil, where, fmt.Errorf("the target %s: %s", where, oneLine(err))
		}
		return s, where, nil
	}
	dir := spec.pebbleDir
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return nil, dir, fmt.Errorf("the target pebble:%s is not empty: store copy only fills a new, empty folder", dir)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, dir, fmt.Errorf("the target pebble:%s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, dir, fmt.Errorf("the target pebble:%s: %w", dir, err)
	}
	s, err := pebblestore.Open(dir, pebblestore.Options{SealKey: key, Logger: logger})
	if err != nil {
		return nil, dir, fmt.Errorf("the target pebble:%s: %s", dir, oneLine(err))
	}
	return s, "pebble:" + dir, nil
}

func openCopyPostgres(ctx context.Context, dsn string, key []byte, logger *slog.Logger) (*pgstore.Store, error) {
	ctx, cancel := context.WithTimeout(ctx, storeOpenTimeout)
	defer cancel()
	return pgstore.Open(ctx, dsn, pgstore.Options{SealKey: key, Logger: logger})
}

// storeHolds names something s holds ("" when it is empty).
func storeHolds(ctx context.Context, s copyStore) (string, error) {
	stop := errors.New("found")
	found := func(what string, err error) (string, error) {
		if errors.Is(err, stop) {
			return what, nil
		}
		return "", err
	}
	for _, c := range []struct {
		what string
		any  func() (bool, error)
	}{
		{"products", func() (bool, error) { l, err := s.ListProducts(ctx, "", 1); return len(l) > 0, err }},
		{"devices", func() (bool, error) { l, err := s.ListDevices(ctx, "", 1); return len(l) > 0, err }},
		{"groups", func() (bool, error) { l, err := s.ListGroups(ctx, "", 1); return len(l) > 0, err }},
		{"packages", func() (bool, error) { l, err := s.ListPackages(ctx, "", 1); return len(l) > 0, err }},
		{"tasks", func() (bool, error) { l, err := s.ListTasks(ctx, "", 1); return len(l) > 0, err }},
	} {
		if ok, err := c.any(); err != nil || ok {
			if err != nil {
				return "", err
			}
			return c.what, nil
		}
	}
	if what, err := found("journal streams", s.Streams(ctx, func(persistence.Stream) error { return stop })); what != "" || err != nil {
		return what, err
	}
	for _, kind := range journalKinds {
		if what, err := found("active journal streams", s.Active(ctx, kind, func(string) error { return stop })); what != "" || err != nil {
			return what, err
		}
	}
	if what, err := found("package files", s.Blobs(ctx, func(string) error { return stop })); what != "" || err != nil {
		return what, err
	}
	return found("sessions", s.SessionTransports(ctx, func(string) error { return stop }))
}

// journalKinds are the kinds of stream a copy walks for active marks.
var journalKinds = []persistence.Kind{persistence.KindDevice, persistence.KindCell, persistence.KindTask}

// copyBatch is how many events, records or devices one write carries.
const copyBatch = 500

// copyWorkers is how many streams are copied at once: the target's
// group commit makes their synced appends share commits, so the more wait
// at once, the fewer commits.
const copyWorkers = 64

// copyWhole copies everything src holds into the empty dst. Sessions go
// before the journal: they are written unsynced, and the journal's synced
// appends make them durable.
func copyWhole(ctx context.Context, src, dst copyStore) error {
	steps := []struct {
		what string
		fn   func(context.Context, copyStore, copyStore) error
	}{
		{"products", copyProducts},
		{"devices", copyDevices},
		{"groups", copyGroups},
		{"tasks", copyTasks},
		{"sessions", copySessions},
		{"package files", copyBlobs},
		{"packages", copyPackages},
		{"journal", copyJournal},
	}
	for _, st := range steps {
		if err := st.fn(ctx, src, dst); err != nil {
			return fmt.Errorf("%s: %w", st.what, err)
		}
	}
	return nil
}

// copySharedSecrets carries the secrets a cluster's nodes share into a
// target that keeps them (PostgreSQL), sealed under its key, and reads them
// back to check them: from a source that keeps them, or from the data
// folder of a Pebble source (fromDataDir, or the folder holding
// pebble:DIR/store), which has them as files. It returns a line for the
// summary ("" when there are none).
func copySharedSecrets(ctx context.Context, src copyStore, from storeSpec, fromDataDir string, dst copyStore) (string, error) {
	want := map[string][]byte{}
	whence := "the source"
	if ss, ok := src.(persistence.SharedSecrets); ok {
		err := ss.ListSharedSecrets(ctx, func(name string, v []byte) error {
			want[name] = bytes.Clone(v)
			return nil
		})
		if err != nil {
			return "", err
		}
	} else {
		dir := fromDataDir
		if clean := filepath.Clean(from.pebbleDir); dir == "" && from.pebbleDir != "" && filepath.Base(clean) == "store" {
			dir = filepath.Dir(clean)
		}
		if dir == "" {
			return "", nil
		}
		whence = "the data folder " + dir
		for _, name := range sharedSecretNames {
			if v, ok := dataDirSecret(dir, name); ok {
				want[name] = v
			}
		}
	}
	names := slices.Sorted(maps.Keys(want))
	if len(names) == 0 {
		return "", nil
	}
	ds, ok := dst.(persistence.SharedSecrets)
	if !ok {
		return fmt.Sprintf("the shared secrets of %s (%s) are not copied: a Pebble store's node keeps its own in its data folder", whence, strings.Join(names, ", ")), nil
	}
	for _, name := range names {
		if err := ds.PutSharedSecret(ctx, name, want[name]); err != nil {
			return "", err
		}
	}
	got := map[string][]byte{}
	if err := ds.ListSharedSecrets(ctx, func(name string, v []byte) error { got[name] = bytes.Clone(v); return nil }); err != nil {
		return "", err
	}
	if !maps.EqualFunc(want, got, bytes.Equal) {
		return "", fmt.Errorf("the target's shared secrets (%s) are not the ones copied (%s)", strings.Join(slices.Sorted(maps.Keys(got)), ", "), strings.Join(names, ", "))
	}
	return fmt.Sprintf("shared secrets copied from %s and verified, sealed under the target's key: %s (every node of a cluster on the target serves with them)", whence, strings.Join(names, ", ")), nil
}

// pages calls fn with each page a List* call returns, until the last.
func pages[T any](ctx context.Context, list func(ctx context.Context, after string, limit int) ([]T, error), id func(T) string, fn func([]T) error) error {
	after := ""
	for {
		page, err := list(ctx, after, persistence.MaxListLimit)
		if err != nil {
			return err
		}
		if len(page) > 0 {
			if err := fn(page); err != nil {
				return err
			}
		}
		if len(page) < persistence.MaxListLimit {
			return nil
		}
		after = id(page[len(page)-1])
	}
}

func copyProducts(ctx context.Context, src, dst copyStore) error {
	return pages(ctx, src.ListProducts, func(p persistence.Product) string { return p.ID }, func(page []persistence.Product) error {
		for _, p := range page {
			if err := dst.PutProduct(ctx, p); err != nil {
				return err
			}
		}
		return nil
	})
}

// copyDevices copies the devices with their credentials, opened with the
// source's key and sealed by the target under its own.
func copyDevices(ctx context.Context, src, dst copyStore) error {
	return pages(ctx, src.ListDevices, func(d persistence.Device) string { return d.ID }, func(page []persistence.Device) error {
		for chunk := range slices.Chunk(page, copyBatch) {
			batch := make([]persistence.Device, len(chunk))
			for i, d := range chunk {
				c, err := src.DeviceCredentials(ctx, d.ID)
				if err != nil {
					return err
				}
				batch[i] = persistence.Device{ID: d.ID, ProductID: d.ProductID, Secret: c.Secret, PSK: c.PSK, Created: d.Created}
			}
			if err := dst.CreateDevices(ctx, batch); err != nil {
				return err
			}
		}
		return nil
	})
}

func copyGroups(ctx context.Context, src, dst copyStore) error {
	return pages(ctx, src.ListGroups, func(g persistence.Group) string { return g.ID }, func(page []persistence.Group) error {
		for _, g := range page {
			if err := dst.PutGroup(ctx, g); err != nil {
				return err
			}
		}
		return nil
	})
}

func copyTasks(ctx context.Context, src, dst copyStore) error {
	return pages(ctx, src.ListTasks, func(t persistence.TaskRecord) string { return t.ID }, func(page []persistence.TaskRecord) error {
		for _, t := range page {
			if err := dst.PutTask(ctx, t); err != nil {
				return err
			}
		}
		return nil
	})
}

func copyPackages(ctx context.Context, src, dst copyStore) error {
	return pages(ctx, src.ListPackages, func(p persistence.Package) string { return p.ID }, func(page []persistence.Package) error {
		for _, p := range page {
			if err := dst.PutPackage(ctx, p); err != nil {
				return err
			}
		}
		return nil
	})
}

// copySessions copies every session with the node that holds it; into a
// store of one node (Pebble), every node's become that node's.
func copySessions(ctx context.Context, src, dst copyStore) error {
	return eachSession(ctx, src, func(node, transport, id string, value []byte) error {
		to, err := persistence.SessionsOf(dst, node)
		if errors.Is(err, persistence.ErrInvalid) {
			to = dst
		} else if err != nil {
			return err
		}
		return to.PutSession(ctx, transport, id, value)
	})
}

// eachSession calls fn with every session of s and the node that holds it
// ("" for a store of one node, and for the sessions every node shares).
func eachSession(ctx context.Context, s copyStore, fn func(node, transport, id string, value []byte) error) error {
	nodes := []string{""}
	if ns, ok := s.(persistence.NodeSessions); ok {
		nodes = nodes[:0]
		if err := ns.SessionNodes(ctx, func(n string) error { nodes = append(nodes, n); return nil }); err != nil {
			return err
		}
	}
	var transports []string
	if err := s.SessionTransports(ctx, func(t string) error { transports = append(transports, t); return nil }); err != nil {
		return err
	}
	slices.Sort(transports)
	for _, node := range nodes {
		of, err := persistence.SessionsOf(s, node)
		if err != nil {
			return err
		}
		for _, t := range transports {
			if err := of.ListSessions(ctx, t, func(id string, v []byte) error { return fn(node, t, id, v) }); err != nil {
				return err
			}
		}
	}
	return nil
}

// copyBlobs streams each blob from src into dst (the stores read and write
// a chunk at a time) and checks its size and SHA-256 as written.
func copyBlobs(ctx context.Context, src, dst copyStore) error {
	return src.Blobs(ctx, func(id string) error {
		b, err := src.OpenBlob(ctx, id)
		if err != nil {
			return err
		}
		defer b.Close()
		n, sum, err := dst.WriteBlob(ctx, id, b, b.Size())
		if err != nil {
			return fmt.Errorf("blob %s: %w", id, err)
		}
		if n != b.Size() || sum != b.SHA256() {
			return fmt.Errorf("blob %s: %d bytes with SHA-256 %x written, the source's has %d bytes and SHA-256 %x", id, n, sum, b.Size(), b.SHA256())
		}
		return nil
	})
}

// copyJournal copies every stream (events with their sequence numbers,
// snapshot, records), copyWorkers streams at a time, and then the active
// marks.
func copyJournal(ctx context.Context, src, dst copyStore) error {
	err := inParallel(ctx, func(ctx context.Context, submit func(func() error) error) error {
		return src.Streams(ctx, func(st persistence.Stream) error {
			return submit(func() error { return copyStream(ctx, src, dst, st) })
		})
	})
	if err != nil {
		return err
	}
	return inParallel(ctx, func(ctx context.Context, submit func(func() error) error) error {
		for _, kind := range journalKinds {
			err := src.Active(ctx, kind, func(id string) error {
				return submit(func() error { return markActive(ctx, dst, persistence.Stream{Kind: kind, ID: id}) })
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// inParallel runs the jobs that feed submits on copyWorkers goroutines and
// returns once all have ended: the first error, of feed or of a job (which
// cancels the ctx that feed and the jobs get).
func inParallel(ctx context.Context, feed func(ctx context.Context, submit func(func() error) error) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan func() error)
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	fail := func(err error) { errOnce.Do(func() { firstErr = err; cancel() }) }
	for range copyWorkers {
		wg.Go(func() {
			for fn := range work {
				if err := fn(); err != nil {
					fail(err)
				}
			}
		})
	}
	err := feed(ctx, func(fn func() error) error {
		select {
		case work <- fn:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	close(work)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return err
}

// copyStream copies one stream's events, records and snapshot; its active
// mark comes later (markActive). A stream of up to copyBatch events and
// records takes one append.
func copyStream(ctx context.Context, src, dst copyStore, st persistence.Stream) error {
	var last uint64
	var batch []persistence.Event
	var recs []persistence.Record
	write := func() error {
		n, err := dst.Append(ctx, persistence.Append{Stream: st, Expected: last, Events: batch, Records: recs})
		if err != nil {
			return fmt.Errorf("stream %s: %w", st, err)
		}
		last, batch, recs = n, nil, nil
		return nil
	}
	err := src.Load(ctx, st, 0, func(e persistence.Event) error {
		if want := last + uint64(len(batch)) + 1; e.Seq != want {
			return fmt.Errorf("stream %s: event %d where %d was expected (the source's journal does not start at 1)", st, e.Seq, want)
		}
		e.Payload = bytes.Clone(e.Payload)
		batch = append(batch, e)
		if len(batch) == copyBatch {
			return write()
		}
		return nil
	})
	if err != nil {
		return err
	}
	err = src.LoadRecords(ctx, st, func(r persistence.Record) error {
		recs = append(recs, r)
		if len(batch)+len(recs) == copyBatch {
			return write()
		}
		return nil
	})
	if err == nil && len(batch)+len(recs) > 0 {
		err = write()
	}
	if err != nil {
		return fmt.Errorf("stream %s: %w", st, err)
	}
	snap, ok, err := src.LoadSnapshot(ctx, st)
	if err != nil {
		return err
	}
	if ok {
		if err := dst.SaveSnapshot(ctx, st, snap); err != nil {
			return fmt.Errorf("stream %s: snapshot: %w", st, err)
		}
	}
	return nil
}

// markActive sets st's active mark in dst, after its events.
func markActive(ctx context.Context, dst copyStore, st persistence.Stream) error {
	last, err := dst.LastSeq(ctx, st)
	if err != nil {
		return err
	}
	yes := true
	if _, err := dst.Append(ctx, persistence.Append{Stream: st, Expected: last, Active: &yes}); err != nil {
		return fmt.Errorf("stream %s: active mark: %w", st, err)
	}
	return nil
}

// storeCounts sums up a store for the copy's verification: the same walk
// of source and target must give equal counts and digests.
type storeCounts struct {
	products, devices, secrets, psks, groups, packages, tasks int
	blobs, blobBytes                                          int64
	streams, events, snapshots, records, active, sessions     int64
	// credentials is the SHA-256 of every device's ID, secret and PSK, in
	// order: equal digests mean every credential opens to the same value.
	credentials [sha256.Size]byte
	// blobSums is the SHA-256 of every blob's ID and SHA-256 as read back.
	blobSums [sha256.Size]byte
}

func (c storeCounts) String() string {
	return fmt.Sprintf("%d products, %d devices (%d secrets and %d PSKs re-sealed), %d groups, %d packages, %d tasks, "+
		"%d package files (%d bytes, SHA-256 checked), %d journal streams (%d events, %d snapshots, %d records, %d active), %d sessions",
		c.products, c.devices, c.secrets, c.psks, c.groups, c.packages, c.tasks,
		c.blobs, c.blobBytes, c.streams, c.events, c.snapshots, c.records, c.active, c.sessions)
}

// diff names what differs between the source's counts (c) and the
// target's; "" when nothing does.
func (c storeCounts) diff(got storeCounts) string {
	var out []string
	check := func(what string, want, have int64) {
		if want != have {
			out = append(out, fmt.Sprintf("%s: %d in the source, %d in the copy", what, want, have))
		}
	}
	check("products", int64(c.products), int64(got.products))
	check("devices", int64(c.devices), int64(got.devices))
	check("secrets", int64(c.secrets), int64(got.secrets))
	check("PSKs", int64(c.psks), int64(got.psks))
	check("groups", int64(c.groups), int64(got.groups))
	check("packages", int64(c.packages), int64(got.packages))
	check("tasks", int64(c.tasks), int64(got.tasks))
	check("package files", c.blobs, got.blobs)
	check("package bytes", c.blobBytes, got.blobBytes)
	check("streams with events", c.streams, got.streams)
	check("events", c.events, got.events)
	check("snapshots", c.snapshots, got.snapshots)
	check("records", c.records, got.records)
	check("active marks", c.active, got.active)
	check("sessions", c.sessions, got.sessions)
	if c.credentials != got.credentials {
		out = append(out, "device credentials differ")
	}
	if c.blobSums != got.blobSums {
		out = append(out, "package files differ")
	}
	return strings.Join(out, "; ")
}

// countStore walks s: every record, credential, blob (read whole, its
// SHA-256 computed and checked against the stored one and its package's)
// and stream.
func countStore(ctx context.Context, s copyStore) (storeCounts, error) {
	var c storeCounts
	err := pages(ctx, s.ListProducts, func(p persistence.Product) string { return p.ID }, func(page []persistence.Product) error {
		c.products += len(page)
		return nil
	})
	if err != nil {
		return c, err
	}
	creds := sha256.New()
	err = pages(ctx, s.ListDevices, func(d persistence.Device) string { return d.ID }, func(page []persistence.Device) error {
		for _, d := range page {
			cr, err := s.DeviceCredentials(ctx, d.ID)
			if err != nil {
				return err
			}
			c.devices++
			if cr.Secret != "" {
				c.secrets++
			}
			if len(cr.PSK) > 0 {
				c.psks++
			}
			fmt.Fprintf(creds, "%q %q %x\n", d.ID, cr.Secret, cr.PSK)
		}
		return nil
	})
	if err != nil {
		return c, err
	}
	creds.Sum(c.credentials[:0])
	if err := pages(ctx, s.ListGroups, func(g persistence.Group) string { return g.ID }, func(page []persistence.Group) error {
		c.groups += len(page)
		return nil
	}); err != nil {
		return c, err
	}
	if err := pages(ctx, s.ListTasks, func(t persistence.TaskRecord) string { return t.ID }, func(page []persistence.TaskRecord) error {
		c.tasks += len(page)
		return nil
	}); err != nil {
		return c, err
	}
	pkgSums := map[string][sha256.Size]byte{}
	if err := pages(ctx, s.ListPackages, func(p persistence.Package) string { return p.ID }, func(page []persistence.Package) error {
		c.packages += len(page)
		for _, p := range page {
			pkgSums[p.ID] = p.SHA256
		}
		return nil
	}); err != nil {
		return c, err
	}
	sums := sha256.New()
	if err := s.Blobs(ctx, func(id string) error {
		b, err := s.OpenBlob(ctx, id)
		if err != nil {
			return err
		}
		defer b.Close()
		h := sha256.New()
		n, err := io.Copy(h, io.NewSectionReader(b, 0, b.Size()))
		if err != nil {
			return fmt.Errorf("blob %s: %w", id, err)
		}
		var sum [sha256.Size]byte
		h.Sum(sum[:0])
		if sum != b.SHA256() || n != b.Size() {
			return fmt.Errorf("blob %s: %d bytes with SHA-256 %x read, stored as %d bytes with SHA-256 %x", id, n, sum, b.Size(), b.SHA256())
		}
		if want, ok := pkgSums[id]; ok && want != sum {
			return fmt.Errorf("package %s: its file has SHA-256 %x, the package says %x", id, sum, want)
		}
		c.blobs++
		c.blobBytes += n
		fmt.Fprintf(sums, "%q %x\n", id, sum)
		return nil
	}); err != nil {
		return c, err
	}
	sums.Sum(c.blobSums[:0])
	var streams, events, snapshots, records atomic.Int64
	err = inParallel(ctx, func(ctx context.Context, submit func(func() error) error) error {
		return s.Streams(ctx, func(st persistence.Stream) error {
			return submit(func() error {
				last, err := s.LastSeq(ctx, st)
				if err != nil {
					return err
				}
				if last > 0 {
					streams.Add(1)
					events.Add(int64(last))
				}
				if _, ok, err := s.LoadSnapshot(ctx, st); err != nil {
					return err
				} else if ok {
					snapshots.Add(1)
				}
				return s.LoadRecords(ctx, st, func(persistence.Record) error { records.Add(1); return nil })
			})
		})
	})
	if err != nil {
		return c, err
	}
	c.streams, c.events, c.snapshots, c.records = streams.Load(), events.Load(), snapshots.Load(), records.Load()
	for _, kind := range journalKinds {
		if err := s.Active(ctx, kind, func(string) error { c.active++; return nil }); err != nil {
			return c, err
		}
	}
	if err := eachSession(ctx, s, func(string, string, string, []byte) error { c.sessions++; return nil }); err != nil {
		return c, err
	}
	return c, nil
}
