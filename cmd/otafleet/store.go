package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pebblestore"
	"github.com/otafleet/otafleet/persistence/pgstore"
)

// storeSpec is a parsed --store: a Pebble folder ("" with no DSN: the
// store folder of --data-dir) or a PostgreSQL connection URL.
type storeSpec struct {
	pebbleDir string
	postgres  string
}

// parseStore parses --store: "" (Pebble in --data-dir), pebble:DIR, or a
// postgres:// (postgresql://) URL. Its errors do not quote a password.
func parseStore(s string) (storeSpec, error) {
	switch {
	case s == "":
		return storeSpec{}, nil
	case strings.HasPrefix(s, "pebble:"):
		dir := strings.TrimPrefix(s, "pebble:")
		if dir == "" {
			return storeSpec{}, errors.New("pebble: needs a folder (pebble:DIR)")
		}
		return storeSpec{pebbleDir: dir}, nil
	case strings.HasPrefix(s, "postgres://"), strings.HasPrefix(s, "postgresql://"):
		u, err := url.Parse(s)
		if err != nil {
			return storeSpec{}, errors.New("is not a valid postgres:// URL (postgres://USER@HOST[:PORT]/DATABASE?sslmode=...)")
		}
		if u.Host == "" && u.Query().Get("host") == "" {
			return storeSpec{}, fmt.Errorf("%s names no host (postgres://USER@HOST[:PORT]/DATABASE?sslmode=...)", u.Redacted())
		}
		if err := pgstore.CheckDSN(s); err != nil {
			return storeSpec{}, fmt.Errorf("%s: %w", u.Redacted(), err)
		}
		return storeSpec{postgres: s}, nil
	}
	return storeSpec{}, errors.New("must be pebble:DIR or a postgres:// URL")
}

// withPasswordFile returns dsn with the password the file at path holds
// (its first line); flag names the flag that gave path, for errors. Like
// PGPASSFILE, the file must be a regular file that group and others cannot
// read. An empty path leaves dsn as it is. The errors never quote the
// password.
func withPasswordFile(flag, dsn, path string) (string, error) {
	if path == "" {
		return dsn, nil
	}
	u, err := url.Parse(dsn)
	if err != nil || u.User == nil || u.User.Username() == "" {
		return "", fmt.Errorf("%s needs a postgres:// URL that names the user (postgres://USER@HOST/DATABASE)", flag)
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s: %s is not a regular file", flag, path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("%s: %s has mode %04o: group and others must have no access to a password file (chmod 600 %s)", flag, path, perm, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	pw, _, _ := strings.Cut(string(b), "\n")
	pw = strings.TrimSuffix(pw, "\r")
	if pw == "" {
		return "", fmt.Errorf("%s: %s holds no password on its first line", flag, path)
	}
	u.User = url.UserPassword(u.User.Username(), pw)
	return u.String(), nil
}

// redactedDSN is the DSN without its password, for messages and logs.
func redactedDSN(dsn string) string {
	if u, err := url.Parse(dsn); err == nil {
		return u.Redacted()
	}
	return "postgres://…"
}

// checkStore checks the settings that go with --store.
func (c serveConfig) checkStore() error {
	spec, err := parseStore(c.Store)
	if err != nil {
		return fmt.Errorf("--store %w", err)
	}
	if spec.postgres == "" {
		if c.StorePasswordFile != "" {
			return errors.New("--store-password-file goes with a postgres:// --store")
		}
		return nil
	}
	switch {
	case c.SealKeyFile == "":
		return fmt.Errorf("--store %s needs --seal-key-file (or $%s): the key that seals device secrets and PSKs never lives in the shared database", redactedDSN(spec.postgres), envSealKeyFile)
	case c.VerifyStore:
		return errors.New("--verify-store checks a Pebble store; PostgreSQL checks its own")
	}
	return nil
}

// servedStore is what serve needs of a store.
type servedStore interface {
	persistence.Store
	persistence.AppendCounter
}

// storeOpenTimeout bounds connecting to PostgreSQL and migrating its
// schema at start.
const storeOpenTimeout = time.Minute

// openStore opens the store --store names; where is what messages call it.
func openStore(ctx context.Context, cfg serveConfig, logger *slog.Logger) (store servedStore, where string, err error) {
	spec, err := parseStore(cfg.Store)
	if err != nil {
		return nil, "", usageError(fmt.Errorf("--store %w", err))
	}
	sealKey, prevKey, err := cfg.sealKeys()
	if err != nil {
		return nil, "", err
	}
	if spec.postgres != "" {
		where = redactedDSN(spec.postgres)
		if spec.postgres, err = withPasswordFile("--store-password-file", spec.postgres, cfg.StorePasswordFile); err != nil {
			return nil, where, err
		}
		ctx, cancel := context.WithTimeout(ctx, storeOpenTimeout)
		defer cancel()
		s, err := pgstore.Open(ctx, spec.postgres, pgstore.Options{SealKey: sealKey, PreviousSealKey: prevKey, Logger: logger, Timeout: cfg.StoreTimeout})
		if err != nil {
			return nil, where, pgOpenError(where, prevKey != nil, err)
		}
		logger.Info("store: PostgreSQL", "store", where)
		return s, where, nil
	}
	dir := spec.pebbleDir
	if dir == "" {
		if dir, err = prepareStoreDir(cfg.DataDir, logger); err != nil {
			return nil, "", err
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", fmt.Errorf("--store: %w", err)
	}
	if sealKey == nil {
		logger.Warn("device secrets and PSKs are sealed with a key kept in the store itself, so whoever reads the data folder can open them: set --seal-key-file")
	}
	s, err := pebblestore.Open(dir, pebblestore.Options{Logger: logger, Verify: cfg.VerifyStore, SealKey: sealKey, PreviousSealKey: prevKey})
	if err != nil {
		return nil, dir, openStoreError(dir, sealKey != nil, prevKey != nil, err)
	}
	return s, dir, nil
}

// pgOpenError words a failure to open a PostgreSQL store on one line,
// naming the seal key flags when the key does not fit.
func pgOpenError(where string, havePrevious bool, err error) error {
	msg := oneLine(err)
	switch {
	case errors.Is(err, pgstore.ErrSealKey) && havePrevious:
		msg = "neither --seal-key-file nor --previous-seal-key-file is the key the store is sealed with"
	case errors.Is(err, pgstore.ErrSealKey):
		msg = "--seal-key-file is not the key the store is sealed with (to change keys, give the old key file as --previous-seal-key-file)"
	}
	return fmt.Errorf("store %s: %s", where, msg)
}

// openStoreError words a failure to open the store for the user: a seal key
// that does not fit names the flags to give, not the store's Go options.
func openStoreError(storeDir string, haveKey, havePrevious bool, err error) error {
	if !errors.Is(err, pebblestore.ErrSealKey) {
		return fmt.Errorf("opening the store: %w", err)
	}
	switch {
	case !haveKey:
		return fmt.Errorf("the store in %s is sealed with a key kept outside it: start with --seal-key-file (or $%s) naming that key file", storeDir, envSealKeyFile)
	case havePrevious:
		return fmt.Errorf("neither --seal-key-file nor --previous-seal-key-file is the key the store in %s is sealed with", storeDir)
	default:
		return fmt.Errorf("--seal-key-file is not the key the store in %s is sealed with (to change keys, give the old key file as --previous-seal-key-file)", storeDir)
	}
}

// storeCommand is `otafleet store`: the verbs that work on a store itself.
func storeCommand(stdout, stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "store",
		Short: "Work on a store itself (PostgreSQL schema migrations, copying a whole store)",
		Args:  cobra.NoArgs,
	}
	var target, passwordFile string
	migrate := &cobra.Command{
		Use:   "migrate --store postgres://...",
		Short: "Apply the PostgreSQL schema migrations this build has and print the schema versions (serve applies them too)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			spec, err := parseStore(target)
			if err != nil {
				return usageError(fmt.Errorf("--store %w", err))
			}
			if spec.postgres == "" {
				return usageError(errors.New("--store must be a postgres:// URL: a Pebble store has no schema to migrate"))
			}
			where := redactedDSN(spec.postgres)
			if spec.postgres, err = withPasswordFile("--store-password-file", spec.postgres, passwordFile); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), storeOpenTimeout)
			defer cancel()
			pool, err := pgxpool.New(ctx, spec.postgres)
			if err != nil {
				return fmt.Errorf("store %s: %s", where, oneLine(err))
			}
			defer pool.Close()
			logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			v, err := pgstore.Migrate(ctx, pool, logger)
			if err != nil {
				return fmt.Errorf("store %s: %s", where, oneLine(err))
			}
			if v.Before == v.After {
				fmt.Fprintf(stdout, "schema version %d: up to date (this build knows versions up to %d)\n", v.After, v.Latest)
			} else {
				fmt.Fprintf(stdout, "schema version %d -> %d (this build knows versions up to %d)\n", v.Before, v.After, v.Latest)
			}
			return nil
		},
	}
	migrate.Flags().StringVar(&target, "store", "", "the PostgreSQL store: postgres://USER@HOST[:PORT]/DATABASE?sslmode=... (the password from the URL, PGPASSWORD or PGPASSFILE)")
	migrate.Flags().StringVar(&passwordFile, "store-password-file", "", "a file (mode 0600) whose first line is the database user's password, as for serve")
	_ = migrate.MarkFlagRequired("store")
	cmd.AddCommand(migrate, storeCopyCommand(stdout, stderr))
	return cmd
}

// oneLine is err's message on one line (pgx joins the errors of several
// addresses with newlines).
func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }
