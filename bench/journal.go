package bench

import (
	"context"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/jackc/pgx/v5"
)

// countEvents counts the journal's events in a stopped server's store: the
// keys under e/ (the journal is never truncated, so this is every event
// ever appended, by every process that ran on the store).
func countEvents(dir string) (int64, error) {
	db, err := pebble.Open(dir, &pebble.Options{ReadOnly: true, Logger: quiet{}})
	if err != nil {
		return 0, err
	}
	defer db.Close()
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte("e/"), UpperBound: []byte("e0")})
	if err != nil {
		return 0, err
	}
	var n int64
	for it.First(); it.Valid(); it.Next() {
		n++
	}
	if err := it.Close(); err != nil {
		return 0, err
	}
	return n, nil
}

// quiet drops pebble's informational messages (a read-only open replays
// the WAL and says so); errors still reach the caller through Open.
type quiet struct{}

func (quiet) Infof(string, ...any)  {}
func (quiet) Errorf(string, ...any) {}
func (quiet) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}

// countEventsPostgres counts the journal's events in a PostgreSQL store
// (persistence/pgstore's events table).
func countEventsPostgres(ctx context.Context, dsn string) (int64, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var n int64
	err = conn.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&n)
	return n, err
}
