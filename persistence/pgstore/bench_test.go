package pgstore_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/persistencetest"
	"github.com/otafleet/otafleet/persistence/pgstore"
)

// The benchmarks are persistencetest's, on a fresh database of the
// package's PostgreSQL server; Append.NoSync is synchronous_commit off.

func benchStore(b *testing.B) persistence.Store {
	b.Helper()
	dsn := pgtest.NewDatabase(b)
	s, err := pgstore.Open(context.Background(), dsn, pgstore.Options{SealKey: testKey, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close(context.Background()) })
	return benchStoreCPU{s, conn}
}

// benchStoreCPU is the benchmarks' store, with the CPU time of the
// server's processes (persistencetest.BenchAppendSynced reports it per
// append).
type benchStoreCPU struct {
	*pgstore.Store
	conn *pgx.Conn
}

// ServerCPU sums the CPU time (user and system, from /proc) of the
// server's processes: every backend (the store's connections stay open
// through a benchmark) and the background processes (WAL writer,
// checkpointer, ...), all of which pg_stat_activity lists.
func (s benchStoreCPU) ServerCPU() (time.Duration, error) { return serverCPU(s.conn) }

// serverCPU is ServerCPU through db.
func serverCPU(db interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) (time.Duration, error) {
	rows, err := db.Query(context.Background(), `SELECT pid FROM pg_stat_activity`)
	if err != nil {
		return 0, err
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return 0, err
	}
	var total time.Duration
	for _, pid := range pids {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // the process ended
		}
		// The fields after the command (in parentheses, which may hold
		// spaces): utime and stime are the 12th and 13th, in clock ticks.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) < 13 {
			return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
		}
		for _, v := range f[11:13] {
			ticks, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
			}
			total += time.Duration(ticks) * time.Second / clockTicks
		}
	}
	return total, nil
}

// clockTicks is the unit of /proc's CPU times (USER_HZ, 100 on Linux).
const clockTicks = 100

func BenchmarkAppendSynced(b *testing.B)   { persistencetest.BenchAppendSynced(b, benchStore) }
func BenchmarkAppendUnsynced(b *testing.B) { persistencetest.BenchAppendUnsynced(b, benchStore) }
func BenchmarkLoad(b *testing.B)           { persistencetest.BenchLoad(b, benchStore) }
func BenchmarkCreateDevices(b *testing.B)  { persistencetest.BenchCreateDevices(b, benchStore) }
