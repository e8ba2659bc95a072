package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors/device/devicefsm"
	"github.com/otafleet/otafleet/internal/etcdtest"
	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pebblestore"
	"github.com/otafleet/otafleet/persistence/pgstore"
)

// TestMain lets the test binary act as the otafleet binary for the process
// tests: with OTAFLEET_TEST_MAIN=1 it runs the command line and exits.
func TestMain(m *testing.M) {
	if os.Getenv("OTAFLEET_TEST_MAIN") == "1" {
		if n := os.Getenv(envBlockAppendsAfter); n != "" {
			testJournalHook = blockAppendsAfter(n)
		}
		if n := os.Getenv(envLoseOutcome); n != "" {
			testJournalHook = loseOutcome(n)
		}
		main()
		return
	}
	// A private PostgreSQL and a private etcd, each started by the first
	// test that needs it.
	os.Exit(pgtest.Wrap(func() int { return etcdtest.Wrap(m.Run) }))
}

// envServerLogDir names a folder where each child serve's log is kept
// (one file per child), to read the timeline of a failing run.
const envServerLogDir = "OTAFLEET_TEST_SERVER_LOGS"

// server is a child `otafleet serve` process whose JSON log lines are read.
type server struct {
	t     *testing.T
	cmd   *exec.Cmd
	lines chan map[string]any
	exit  chan error

	// raw keeps every line of the child's that is not JSON (a race
	// report's, a panic's), whoever read it from lines: await drops the
	// lines it does not match.
	rawMu sync.Mutex
	raw   []map[string]any
}

// maxRaw bounds server.raw.
const maxRaw = 1 << 16

func startServer(t *testing.T, args ...string) *server {
	t.Helper()
	return startServerEnv(t, nil, args...)
}

// startServerEnv is startServer with more environment variables (NAME=value).
func startServerEnv(t *testing.T, env []string, args ...string) *server {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"serve"}, args...)...)
	cmd.Env = append(append(os.Environ(), "OTAFLEET_TEST_MAIN=1"), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, cmd: cmd, lines: make(chan map[string]any, 4096), exit: make(chan error, 1)}
	var out io.Reader = stderr
	if dir := os.Getenv(envServerLogDir); dir != "" { // keep the child's log for a failing run
		f, err := os.CreateTemp(dir, strings.ReplaceAll(t.Name(), "/", "_")+"-*.log")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = f.Close() })
		t.Logf("server log: %s", f.Name())
		out = io.TeeReader(stderr, f)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				m = map[string]any{"msg": "raw", "text": sc.Text()}
				s.rawMu.Lock()
				if len(s.raw) < maxRaw {
					s.raw = append(s.raw, m)
				}
				s.rawMu.Unlock()
			}
			s.lines <- m
		}
		close(s.lines)
		s.exit <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return s
}

// await reads log lines until match returns true; it fails on timeout or exit.
func (s *server) await(ctx context.Context, what string, match func(map[string]any) bool) map[string]any {
	s.t.Helper()
	for {
		select {
		case m, ok := <-s.lines:
			if !ok {
				s.t.Fatalf("server exited while waiting for %s", what)
			}
			if match(m) {
				return m
			}
		case <-ctx.Done():
			s.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// awaitOr is await that runs onTimeout (diagnostics) before failing.
func (s *server) awaitOr(ctx context.Context, what string, match func(map[string]any) bool, onTimeout func()) map[string]any {
	s.t.Helper()
	for {
		select {
		case m, ok := <-s.lines:
			if !ok {
				s.t.Fatalf("server exited while waiting for %s", what)
			}
			if match(m) {
				return m
			}
		case <-ctx.Done():
			onTimeout()
			s.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// processStore is the store a process test runs `serve` on: Pebble in
// the data folder, or a database of its own on the test binary's private
// PostgreSQL (pgtest), with a seal key file.
type processStore struct {
	postgres bool
	dir      string // the data folder
	dsn      string // postgres only
	args     []string
}

// sealKeyHex is the seal key of the process tests' PostgreSQL stores.
var sealKeyHex = strings.Repeat("5e", 32)

func newProcessStore(t *testing.T, dir string, postgres bool) processStore {
	t.Helper()
	s := processStore{postgres: postgres, dir: dir}
	if postgres {
		s.dsn = pgtest.NewDatabase(t)
		s.args = []string{"--store", s.dsn, "--seal-key-file", writeKey(t, "seal.key", sealKeyHex+"\n", 0o600)}
	}
	return s
}

// open opens the store once the servers on it are gone; the caller closes it.
func (s processStore) open() (persistence.EventStore, error) {
	if !s.postgres {
		return pebblestore.Open(filepath.Join(s.dir, "store"), pebblestore.Options{Logger: slog.New(slog.DiscardHandler)})
	}
	key, err := hex.DecodeString(sealKeyHex)
	if err != nil {
		return nil, err
	}
	return pgstore.Open(context.Background(), s.dsn, pgstore.Options{SealKey: key, Logger: slog.New(slog.DiscardHandler)})
}

// dumpInFlight logs the devices that still have a job, from the journal.
func dumpInFlight(t *testing.T, store processStore) {
	st, err := store.open()
	if err != nil {
		t.Logf("dump: %v", err)
		return
	}
	defer st.Close()
	ctx := context.Background()
	n := 0
	_ = st.Active(ctx, persistence.KindDevice, func(id string) error {
		s := devicefsm.New(id)
		var tail []string
		_ = st.Load(ctx, persistence.Stream{Kind: persistence.KindDevice, ID: id}, 0, func(e persistence.Event) error {
			ev := &messages.DeviceEvent{}
			if proto.Unmarshal(e.Payload, ev) == nil {
				s = devicefsm.Evolve(s, ev)
				tail = append(tail, ev.String())
			}
			return nil
		})
		if n++; n <= 5 {
			t.Logf("in flight: %s %v %v permit=%q held=%v online=%v outbox=%d; last events:\n  %s", id, s.Job.GetProtocol(), s.Stage,
				s.PermitCell, s.PermitHeld, s.Online, len(s.Outbox), strings.Join(tail[max(0, len(tail)-5):], "\n  "))
		}
		return nil
	})
	t.Logf("%d devices in flight", n)
}

// dumpJournals logs every event of the devices ids, from the journal.
func dumpJournals(t *testing.T, store processStore, ids []string) {
	st, err := store.open()
	if err != nil {
		t.Logf("dump: %v", err)
		return
	}
	defer st.Close()
	for _, id := range ids {
		var b strings.Builder
		err := st.Load(context.Background(), persistence.Stream{Kind: persistence.KindDevice, ID: id}, 0, func(e persistence.Event) error {
			ev := &messages.DeviceEvent{}
			if err := proto.Unmarshal(e.Payload, ev); err != nil {
				return err
			}
			ev.AtUnixNano = 0
			fmt.Fprintf(&b, "\n  %d %s %v", e.Seq, time.Unix(0, e.At).UTC().Format("15:04:05.000"), ev)
			return nil
		})
		t.Logf("journal of %s (%v):%s", id, err, b.String())
	}
}

// anySlice is v as a slice of a decoded JSON array (nil otherwise).
func anySlice(v any) []any {
	s, _ := v.([]any)
	return s
}

// wait drains the log and returns the exit error.
func (s *server) wait(ctx context.Context) (error, []map[string]any) {
	var all []map[string]any
	for {
		select {
		case m, ok := <-s.lines:
			if !ok {
				return <-s.exit, all
			}
			all = append(all, m)
		case <-ctx.Done():
			s.t.Fatal("server did not exit")
		}
	}
}

// waitRaw is wait returning every line the child wrote that was not JSON,
// from its start (thirdPartyRacesOnly reads race reports from them).
func (s *server) waitRaw(ctx context.Context) (error, []map[string]any) {
	err, _ := s.wait(ctx)
	s.rawMu.Lock()
	defer s.rawMu.Unlock()
	return err, slices.Clone(s.raw)
}

func msg(name string) func(map[string]any) bool {
	return func(m map[string]any) bool { return m["msg"] == name }
}

// TestProcessKillNine is the real-process crash test: a campaign over 300
// simulated devices (MQTT, FOTA, PCP) runs in `otafleet serve`, which is
// killed with SIGKILL mid-way and started again on the same data dir. The
// campaign finishes with every device succeeded exactly once — no second
// upgrade, Execute or upgrade event. Health and metrics answer; SIGTERM exits 0.
func TestProcessKillNine(t *testing.T) { testProcessKillNine(t, false, nil, nil) }

// TestProcessKillNinePostgres is TestProcessKillNine on a PostgreSQL store
// (serve --store postgres://...).
func TestProcessKillNinePostgres(t *testing.T) { testProcessKillNine(t, true, nil, nil) }

// TestProcessKillNineLosesOutcome (issue 21) is TestProcessKillNine killed
// at the worst moment for a device's unsynced JobFinished: a failpoint
// (envLoseOutcome) acknowledges the 30th such append without writing it,
// so that the step's effects run (the outcome goes to the task, the slot to
// the cell, the observations are cancelled), and takes no append after it,
// as a crash before the next synced commit would; the server is killed on
// the failpoint's log line. The campaign still ends with every device
// upgraded exactly once. (It needs outcomes written unsynced, see
// messages.DeviceEvent.MustSync: with them synced there is none to lose.)
func TestProcessKillNineLosesOutcome(t *testing.T) {
	testProcessKillNine(t, false, []string{envLoseOutcome + "=30"}, msg("failpoint: outcome lost"))
}

// testProcessKillNine runs the campaign of TestProcessKillNine. env is
// added to the first server's environment; killAt, if set, picks the log
// line to kill it at (after 100 upgrades otherwise).
func testProcessKillNine(t *testing.T, postgres bool, env []string, killAt func(map[string]any) bool) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	dir := t.TempDir()
	store := newProcessStore(t, dir, postgres)
	// Short step timeouts: a downlink lost in the crash (say, a PCP 0x17 that
	// was journaled but never reached its device) is never sent twice; the
	// step times out and the task's retry (1 minute later) runs the device
	// again. With the default 3 minutes that would take longer than this test.
	short := "3s"
	args := []string{"--data-dir", dir, "--api-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", "--coap-addr", "127.0.0.1:0", "--coaps-addr", "127.0.0.1:0", "--download-addr", "127.0.0.1:0", "--log-format", "json",
		"--simulate", "300", "--simulate-protocol", "mixed", "--simulate-cells", "6", "--simulate-campaign", "--simulate-delay", "30ms",
		"--timeout-version-report", short, "--timeout-radio-query", short, "--timeout-cell-query", short,
		"--timeout-download-start", short, "--timeout-update-start", short, "--timeout-version-check", short}
	args = append(args, store.args...)

	first := startServerEnv(t, env, args...)
	if killAt != nil {
		t.Logf("killed at %v", first.await(ctx, "the kill's log line", killAt))
	} else {
		upgraded := 0
		first.await(ctx, "100 upgrades", func(m map[string]any) bool {
			if m["msg"] == "simulated device upgraded" {
				upgraded++
			}
			return upgraded >= 100
		})
	}
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err, _ := first.wait(ctx); err == nil {
		t.Fatal("a killed server exited cleanly?")
	}

	second := startServer(t, args...)
	rec := second.await(ctx, "recovery", func(m map[string]any) bool { return m["msg"] == "recovering actors" && m["kind"] == "device" })
	t.Logf("recovered devices in flight: %v", rec["count"])
	fin := second.awaitOr(ctx, "campaign end", msg("simulated campaign finished"), func() {
		_ = second.cmd.Process.Signal(syscall.SIGKILL)
		second.wait(context.Background())
		dumpInFlight(t, store)
	})
	if fin["succeeded"] != 300.0 || fin["devices"] != 300.0 || fin["devices_upgraded_twice"] != 0.0 || fin["upgrades"] != 300.0 {
		// The journals of the devices upgraded twice say how.
		_ = second.cmd.Process.Signal(syscall.SIGKILL)
		second.wait(context.Background())
		var ids []string
		for _, id := range anySlice(fin["twice_ids"]) {
			ids = append(ids, fmt.Sprint(id))
		}
		dumpJournals(t, store, ids)
		t.Fatalf("campaign after kill -9: %v", fin)
	}

	// Health (Connect JSON) and metrics on the API address.
	var addrs map[string]string
	b, err := os.ReadFile(filepath.Join(dir, "addrs.json"))
	if err != nil || json.Unmarshal(b, &addrs) != nil || addrs["api"] == "" {
		t.Fatalf("addrs.json: %s %v", b, err)
	}
	resp, err := http.Post("http://"+addrs["api"]+"/grpc.health.v1.Health/Check", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte("SERVING")) {
		t.Fatalf("health: %d %s", resp.StatusCode, body)
	}
	resp, err = http.Get("http://" + addrs["api"] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{"otafleet_events_appended_total", "otafleet_actors_alive", "otafleet_journal_commit_seconds", "otafleet_subtasks", "otafleet_cell_budget_units_in_use"} {
		if !bytes.Contains(body, []byte(name)) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if bytes.Contains(body, []byte(`node="`)) {
		t.Error("/metrics of a node alone has node labels (only a cluster's nodes label their metrics)")
	}
	tok, err := os.ReadFile(filepath.Join(dir, "api-token"))
	if err != nil || len(bytes.TrimSpace(tok)) != 64 {
		t.Errorf("api-token: %q %v", tok, err)
	}
	// The API answers with the token (Connect JSON, as curl would) and refuses without it.
	call := func(token string) int {
		req, _ := http.NewRequest("POST", "http://"+addrs["api"]+"/otafleet.v1.ProductService/CreateProduct",
			strings.NewReader(`{"name":"meters","protocol":"PROTOCOL_LWM2M"}`))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := call(""); code != http.StatusUnauthorized {
		t.Errorf("CreateProduct without a token: HTTP %d", code)
	}
	if code := call(string(bytes.TrimSpace(tok))); code != http.StatusOK {
		t.Errorf("CreateProduct with the token: HTTP %d", code)
	}
	if fi, err := os.Stat(filepath.Join(dir, "api-token")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("api-token mode: %v %v", fi.Mode(), err)
	}

	if err := second.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err, _ := second.wait(ctx); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
}

// TestProcessCorruptJournal: a journal entry of an in-flight device is
// damaged while the server is down; the next start refuses to run, names the
// key, and exits non-zero.
func TestProcessCorruptJournal(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	args := []string{"--data-dir", dir, "--api-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", "--coap-addr", "127.0.0.1:0", "--coaps-addr", "127.0.0.1:0", "--download-addr", "127.0.0.1:0", "--log-format", "json",
		"--simulate", "100", "--simulate-protocol", "fota", "--simulate-campaign", "--simulate-delay", "200ms"}
	s := startServer(t, args...)
	s.await(ctx, "a first upgrade", msg("simulated device upgraded"))
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s.wait(ctx)

	// Damage the last event of one device that still has a job.
	db, err := pebble.Open(filepath.Join(dir, "store"), &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	iter, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte("a/d/"), UpperBound: []byte("a/d0")})
	if err != nil {
		t.Fatal(err)
	}
	if !iter.First() {
		t.Fatal("no device in flight to damage")
	}
	device := string(iter.Key()[len("a/d/"):])
	iter.Close()
	prefix := []byte("e/d/" + device + "/")
	iter, err = db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: append(bytes.Clone(prefix), 0xff)})
	if err != nil {
		t.Fatal(err)
	}
	if !iter.Last() {
		t.Fatal("device has no events")
	}
	key := bytes.Clone(iter.Key())
	iter.Close()
	if err := db.Set(key, []byte{1, 2, 3, 4, 5, 6}, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	again := startServer(t, args...)
	err, lines := again.wait(ctx)
	var exit *exec.ExitError
	if err == nil || !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("a corrupt journal started: %v", err)
	}
	found := false
	for _, m := range lines {
		if strings.Contains(fmt.Sprint(m), device) && strings.Contains(fmt.Sprint(m), "corrupt") {
			found = true
		}
	}
	if !found {
		t.Fatalf("no log line names the corrupt entry of %s: %v", device, lines)
	}
}

// TestProcessDataDirInUse: a second `otafleet serve` of a data folder that a
// running one holds exits 1 at once, naming the holder's pid, and leaves the
// folder as it was; once the holder is killed with SIGKILL the folder is free
// again, and a clean stop leaves no pid behind.
func TestProcessDataDirInUse(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	args := []string{"--data-dir", dir, "--api-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", "--coap-addr", "127.0.0.1:0", "--coaps-addr", "127.0.0.1:0", "--download-addr", "127.0.0.1:0", "--log-format", "json"}
	first := startServer(t, args...)
	first.await(ctx, "serving", msg("serving"))
	addrs, err := os.ReadFile(filepath.Join(dir, "addrs.json"))
	if err != nil {
		t.Fatal(err)
	}

	second := startServer(t, args...)
	err, lines := second.wait(ctx)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("second serve of the same folder: %v, want exit 1; log: %v", err, lines)
	}
	want := fmt.Sprintf("otafleet: data folder in use by another otafleet serve, pid %d", first.cmd.Process.Pid)
	found := false
	for _, m := range lines {
		found = found || strings.HasPrefix(fmt.Sprint(m["text"]), want)
	}
	if !found {
		t.Fatalf("no line starts with %q: %v", want, lines)
	}
	if again, err := os.ReadFile(filepath.Join(dir, "addrs.json")); err != nil || !bytes.Equal(again, addrs) {
		t.Fatalf("the refused serve changed addrs.json: %s, was %s (%v)", again, addrs, err)
	}

	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.wait(ctx)
	third := startServer(t, args...)
	third.await(ctx, "serving after the holder was killed", msg("serving"))
	if pid, err := holderPID(dir); err != nil || pid != third.cmd.Process.Pid {
		t.Fatalf("serve.pid: %d %v, want %d", pid, err, third.cmd.Process.Pid)
	}
	if err := third.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err, _ := third.wait(ctx); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, pidFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("serve.pid after a clean stop: %v", err)
	}
}

// envLoseOutcome, set only by TestProcessKillNineLosesOutcome for its first
// `serve`, is the failpoint of loseOutcome: the count of the device's
// unsynced JobFinished appends at which to lose one.
const envLoseOutcome = "OTAFLEET_TEST_LOSE_OUTCOME"

// loseOutcome is the failpoint of envLoseOutcome as a journal hook: the
// n-th unsynced device append holding a JobFinished is acknowledged but not
// written (the store's log never gets it), and no append after it returns,
// as if the process died before its next synced commit; the step's effects
// run meanwhile. It logs "failpoint: outcome lost" with the device.
func loseOutcome(n string) func(persistence.EventStore, *slog.Logger) persistence.EventStore {
	at, err := strconv.Atoi(n)
	if err != nil || at < 1 {
		panic(fmt.Sprintf("%s=%q: want a count", envLoseOutcome, n))
	}
	return func(s persistence.EventStore, log *slog.Logger) persistence.EventStore {
		return &losingJournal{EventStore: s, log: log, at: int64(at)}
	}
}

type losingJournal struct {
	persistence.EventStore
	log    *slog.Logger
	at     int64
	n      atomic.Int64
	frozen atomic.Bool
}

func (j *losingJournal) Append(ctx context.Context, a persistence.Append) (uint64, error) {
	if j.frozen.Load() {
		<-ctx.Done() // the engine appends with a background context: forever
		return 0, ctx.Err()
	}
	if a.NoSync && a.Stream.Kind == persistence.KindDevice {
		for _, e := range a.Events {
			var ev messages.DeviceEvent
			if proto.Unmarshal(e.Payload, &ev) != nil || ev.GetJobFinished() == nil {
				continue
			}
			if j.n.Add(1) == j.at && j.frozen.CompareAndSwap(false, true) {
				j.log.Warn("failpoint: outcome lost", "device", a.Stream.ID, "status", ev.GetJobFinished().GetStatus().String())
				return a.Expected + uint64(len(a.Events)), nil
			}
		}
	}
	return j.EventStore.Append(ctx, a)
}
