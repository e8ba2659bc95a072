package pgstore_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pgstore"
)

// The fencing test runs two writer processes: this test binary, re-executed
// with these variables set (TestMain runs fenceWriter instead of the tests).
const (
	envFenceWriter = "PGSTORE_FENCE_WRITER" // the writer's name
	envFenceDSN    = "PGSTORE_FENCE_DSN"
	envFenceRounds = "PGSTORE_FENCE_ROUNDS"
)

var fenceStream = persistence.Stream{Kind: persistence.KindDevice, ID: "fenced"}

// fenceWriter is a writer process: once its standard input says "go", it
// appends to fenceStream with Expected 0, then rounds times with the last
// sequence number it read, and prints "won <seq>" or "lost <expected>" for
// each append. It returns the exit status.
func fenceWriter() int {
	name := os.Getenv(envFenceWriter)
	rounds, err := strconv.Atoi(os.Getenv(envFenceRounds))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx := context.Background()
	s, err := pgstore.Open(ctx, os.Getenv(envFenceDSN), pgstore.Options{SealKey: testKey})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer s.Close()
	fmt.Println("ready")
	if line, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil || line != "go\n" {
		fmt.Fprintf(os.Stderr, "waiting for go: %q, %v\n", line, err)
		return 1
	}
	for i := 0; i <= rounds; i++ {
		var expected uint64
		if i > 0 {
			if expected, err = s.LastSeq(ctx, fenceStream); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		seq, err := s.Append(ctx, persistence.Append{Stream: fenceStream, Expected: expected, Events: []persistence.Event{
			{Type: persistence.EventTypeDevice, Version: 1, Payload: []byte(name)},
		}})
		switch {
		case err == nil:
			fmt.Println("won", seq)
		case errors.Is(err, persistence.ErrConflict):
			fmt.Println("lost", expected)
		default:
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return 0
}

// TestFencingTwoProcesses: two processes append to one stream, each with
// the sequence number it last read; whatever the interleaving, every
// sequence number has exactly one winner, whose event is the one stored,
// and of the two first appends (both expecting an empty stream) exactly one
// wins.
func TestFencingTwoProcesses(t *testing.T) {
	const rounds = 200
	dsn := pgtest.NewDatabase(t)
	// Create the schema once, so that the writers do not race to migrate.
	s, err := pgstore.Open(context.Background(), dsn, pgstore.Options{SealKey: testKey, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	type writer struct {
		name  string
		cmd   *exec.Cmd
		stdin io.WriteCloser
		out   *bufio.Scanner
		won   []uint64
		lost  int
	}
	var ws []*writer
	for _, name := range []string{"A", "B"} {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envFenceWriter+"="+name, envFenceDSN+"="+dsn, envFenceRounds+"="+strconv.Itoa(rounds))
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		w := &writer{name: name, cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
		if !w.out.Scan() || w.out.Text() != "ready" {
			t.Fatalf("writer %s did not start: %q", name, w.out.Text())
		}
		ws = append(ws, w)
	}
	for _, w := range ws { // both are ready: release them together
		if _, err := io.WriteString(w.stdin, "go\n"); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Go(func() {
			for w.out.Scan() {
				f := strings.Fields(w.out.Text())
				n, _ := strconv.ParseUint(f[len(f)-1], 10, 64)
				if f[0] == "won" {
					w.won = append(w.won, n)
				} else {
					w.lost++
				}
			}
		})
	}
	wg.Wait()
	for _, w := range ws {
		if err := w.cmd.Wait(); err != nil {
			t.Fatalf("writer %s: %v", w.name, err)
		}
		if len(w.won)+w.lost != rounds+1 {
			t.Fatalf("writer %s reported %d appends, want %d", w.name, len(w.won)+w.lost, rounds+1)
		}
	}

	owner := map[uint64]string{}
	for _, w := range ws {
		for _, seq := range w.won {
			if other, dup := owner[seq]; dup {
				t.Fatalf("sequence number %d won by both %s and %s", seq, other, w.name)
			}
			owner[seq] = w.name
		}
	}
	if owner[1] == "" { // and not both: see above
		t.Fatal("neither of the two first appends (expecting an empty stream) won")
	}
	ctx := context.Background()
	last, err := s.LastSeq(ctx, fenceStream)
	if err != nil {
		t.Fatal(err)
	}
	if int(last) != len(owner) {
		t.Fatalf("the stream ends at %d, but %d appends won", last, len(owner))
	}
	var seq uint64
	err = s.Load(ctx, fenceStream, 0, func(e persistence.Event) error {
		seq++
		if string(e.Payload) != owner[e.Seq] {
			return fmt.Errorf("event %d was written by %s, but %q won it", e.Seq, e.Payload, owner[e.Seq])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d appends won (A %d, B %d), %d lost to the other writer", last, len(ws[0].won), len(ws[1].won), ws[0].lost+ws[1].lost)
}
