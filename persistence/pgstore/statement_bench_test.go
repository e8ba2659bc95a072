package pgstore_test

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/otafleet/otafleet/persistence"
)

// clientCPU returns the CPU time (user and system) this process used.
func clientCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkStatement compares ways of writing one group commit's events
// (rows of new sequence numbers of distinct streams, 64-byte payloads) in
// one transaction, synced or not (sync=off: the statement's own cost, not
// the WAL flush's), on the schema's events table: the multi-row
// INSERT of unnested arrays (what the committer sends), COPY, a pipelined
// batch of one-row INSERTs, and a multi-row INSERT ... VALUES. Each is a
// prepared statement (pgx's statement cache) but COPY. The machine being
// shared, compare the CPU times per statement (this process's and the
// server's) rather than the wall time.
//
//	go test ./persistence/pgstore -run '^$' -bench Statement -benchtime 400x
func BenchmarkStatement(b *testing.B) {
	ctx := context.Background()
	for _, sync := range []string{"on", "off"} {
		for _, rows := range []int{50, 200} {
			for _, way := range []string{"unnest", "copy", "batch", "values"} {
				b.Run(fmt.Sprintf("sync=%s/rows=%d/%s", sync, rows, way), func(b *testing.B) {
					cfg, err := pgxpool.ParseConfig(migratedDatabase(b))
					if err != nil {
						b.Fatal(err)
					}
					cfg.ConnConfig.RuntimeParams["synchronous_commit"] = sync
					pool, err := pgxpool.NewWithConfig(ctx, cfg)
					if err != nil {
						b.Fatal(err)
					}
					defer pool.Close()
					body := persistence.EncodeEvent(persistence.Event{Type: persistence.EventTypeDevice, Version: 1, Payload: make([]byte, 64)})
					kinds, ids, bodies := make([]string, rows), make([]string, rows), make([][]byte, rows)
					for i := range rows {
						kinds[i], ids[i], bodies[i] = "device", fmt.Sprintf("bench-%d", i), body
					}
					var values strings.Builder
					values.WriteString("INSERT INTO events (kind, id, seq, body) VALUES ")
					for i := range rows {
						if i > 0 {
							values.WriteString(", ")
						}
						fmt.Fprintf(&values, "($%d, $%d, $%d, $%d)", 4*i+1, 4*i+2, 4*i+3, 4*i+4)
					}
					seqs := make([]int64, rows)
					server0, err := serverCPU(pool)
					if err != nil {
						b.Fatal(err)
					}
					cpu0 := clientCPU(b)
					b.ResetTimer()
					for n := 0; b.Loop(); n++ {
						for i := range seqs {
							seqs[i] = int64(n + 1)
						}
						switch way {
						case "unnest":
							_, err = pool.Exec(ctx, `INSERT INTO events (kind, id, seq, body) SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[])`, kinds, ids, seqs, bodies)
						case "copy":
							_, err = pool.CopyFrom(ctx, pgx.Identifier{"events"}, []string{"kind", "id", "seq", "body"}, pgx.CopyFromSlice(rows, func(i int) ([]any, error) {
								return []any{kinds[i], ids[i], seqs[i], bodies[i]}, nil
							}))
						case "batch":
							err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
								var batch pgx.Batch
								for i := range rows {
									batch.Queue(`INSERT INTO events (kind, id, seq, body) VALUES ($1, $2, $3, $4)`, kinds[i], ids[i], seqs[i], bodies[i])
								}
								return tx.SendBatch(ctx, &batch).Close()
							})
						case "values":
							args := make([]any, 0, 4*rows)
							for i := range rows {
								args = append(args, kinds[i], ids[i], seqs[i], bodies[i])
							}
							_, err = pool.Exec(ctx, values.String(), args...)
						}
						if err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64(b.N*rows)/b.Elapsed().Seconds(), "rows/s")
					server1, err := serverCPU(pool)
					if err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(float64((clientCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
					b.ReportMetric(float64((server1-server0).Microseconds())/float64(b.N), "server-cpu-us/op")
				})
			}
		}
	}
}
