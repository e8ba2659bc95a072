package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pgstore"
)

// The store's log lines when PostgreSQL goes and comes back.
const (
	msgStoreDown = "pgstore: PostgreSQL is unavailable; appends and reads fail until it is back"
	msgStoreUp   = "pgstore: PostgreSQL is available again"
)

// TestProcessPostgresCrash (issue 22): PostgreSQL crashes (pg_ctl -m
// immediate stop) under `otafleet serve --store postgres://...` while a
// campaign over 300 simulated devices runs. While it is down, serve stays
// up: API writes fail with Connect's unavailable (HTTP 503) and a clear
// message, health says NOT_SERVING, and the store logs one line (not one
// per failed append). Once PostgreSQL is started again on the same data
// folder and port, serve resumes without a restart: what the API
// acknowledged before the crash is in the database, the campaign's
// progress does not go back, and the campaign finishes with every device
// upgraded exactly once.
func TestProcessPostgresCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	if os.Getenv(pgtest.EnvDSN) != "" {
		t.Skip("the test crashes its own private server: it cannot crash one given by " + pgtest.EnvDSN)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
	defer cancel()
	srv, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Error(err)
		}
	})
	dsn := srv.NewDatabase(t)
	sealHex := strings.Repeat("5e", 32)
	dir := t.TempDir()
	// Short step timeouts, as in the kill -9 test: a report refused while
	// PostgreSQL is down is not sent again by a simulated device, so its
	// step times out and the task's retry (1 minute later) runs it again.
	// The steps that wait on a device's own report (download, update
	// result) get 20 s, not their default hour, which a refused report of
	// theirs would wait out (a full race run once saw 299 of 300 devices
	// finish within the test's 4 minutes).
	short, long := "3s", "20s"
	args := []string{"--data-dir", dir, "--api-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", "--coap-addr", "127.0.0.1:0", "--coaps-addr", "127.0.0.1:0", "--download-addr", "127.0.0.1:0", "--log-format", "json",
		"--simulate", "300", "--simulate-protocol", "mixed", "--simulate-cells", "6", "--simulate-campaign", "--simulate-delay", "30ms",
		"--timeout-version-report", short, "--timeout-radio-query", short, "--timeout-cell-query", short,
		"--timeout-download-start", short, "--timeout-update-start", short, "--timeout-version-check", short,
		"--timeout-download", long, "--timeout-update-result", long, "--timeout-mqtt-result", long,
		"--store", dsn, "--seal-key-file", writeKey(t, "seal.key", sealHex+"\n", 0o600), "--store-timeout", "2s"}
	s := startServer(t, args...)

	// Every log line is counted: the lines about the store's state, and any
	// per-actor line the outage caused.
	counts := map[string]int{}
	var lastProgress float64
	done := map[string]bool{} // the simulated devices that upgraded
	note := func(m map[string]any) {
		switch msg, _ := m["msg"].(string); msg {
		case "simulated device upgraded":
			done[fmt.Sprint(m["device"])] = true
		case msgStoreDown, msgStoreUp, "journal write failed; the actor restarts from its journal", "actor cannot recover; it refuses all input", "input refused", "campaign progress":
			counts[msg]++
		case "simulated campaign progress":
			lastProgress, _ = m["succeeded"].(float64)
		}
	}
	awaitNoting := func(what string, match func(map[string]any) bool) map[string]any {
		t.Helper()
		return s.await(ctx, what, func(m map[string]any) bool { note(m); return match(m) })
	}
	upgraded := 0
	awaitNoting("100 upgrades", func(m map[string]any) bool {
		if m["msg"] == "simulated device upgraded" {
			upgraded++
		}
		return upgraded >= 100
	})
	api := readAPIAddr(t, dir)
	token := readToken(t, dir)

	// Acknowledged before the crash: products the API created, and the
	// campaign's progress it reported.
	var acked []string
	for i := range 5 {
		name := fmt.Sprintf("before-crash-%d", i)
		code, body := apiPost(t, api, token, "ProductService/CreateProduct", `{"name":"`+name+`","protocol":"PROTOCOL_LWM2M"}`)
		if code != http.StatusOK {
			t.Fatalf("CreateProduct before the crash: HTTP %d %s", code, body)
		}
		var res struct{ Product struct{ ProductID string } }
		if err := json.Unmarshal(body, &res); err != nil || res.Product.ProductID == "" {
			t.Fatalf("CreateProduct answer %s: %v", body, err)
		}
		acked = append(acked, res.Product.ProductID)
	}
	before := taskSuccesses(t, api, token)

	if err := srv.Crash(); err != nil {
		t.Fatal(err)
	}
	awaitNoting("the store's unavailability", msg(msgStoreDown))
	code, body := apiPost(t, api, token, "ProductService/CreateProduct", `{"name":"during-crash","protocol":"PROTOCOL_LWM2M"}`)
	if code != http.StatusServiceUnavailable || !strings.Contains(string(body), `"unavailable"`) || !strings.Contains(string(body), "PostgreSQL") {
		t.Fatalf("CreateProduct while PostgreSQL is down: HTTP %d %s; want 503, code unavailable, a message naming PostgreSQL", code, body)
	}
	t.Logf("CreateProduct while PostgreSQL is down: HTTP %d %s", code, body)
	if st := healthStatus(t, api); st != "SERVING_STATUS_NOT_SERVING" {
		t.Fatalf("health while PostgreSQL is down: %s", st)
	}
	// A few seconds of load on a store that is down: the simulated devices
	// report, deadlines fire, actors retry (the progress lines are logged
	// every second).
	ticks := 0
	awaitNoting("5 s of the outage", func(m map[string]any) bool {
		if m["msg"] == "simulated campaign progress" {
			ticks++
		}
		return ticks >= 5
	})

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	awaitNoting("the store back", msg(msgStoreUp))
	fin := s.awaitOr(ctx, "campaign end", func(m map[string]any) bool { note(m); return m["msg"] == "simulated campaign finished" }, func() {
		t.Logf("log lines counted: %v, last progress %v", counts, lastProgress)
		jctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		logged := 0
		for i := 0; i < 300 && logged < 5; i++ { // the journals of devices that never upgraded
			if id := fmt.Sprintf("sim-%d", i); !done[id] {
				logJournal(jctx, t, dsn, mustHex(t, sealHex), id)
				logged++
			}
		}
	})
	if fin["succeeded"] != 300.0 || fin["devices"] != 300.0 || fin["devices_upgraded_twice"] != 0.0 || fin["upgrades"] != 300.0 {
		ids, _ := fin["twice_ids"].([]any)
		for _, id := range ids { // their journals, to read a failure
			logJournal(ctx, t, dsn, mustHex(t, sealHex), fmt.Sprint(id))
		}
		t.Fatalf("campaign after the PostgreSQL crash: %v", fin)
	}
	t.Logf("log lines counted: %v", counts)
	if counts[msgStoreDown] < 1 || counts[msgStoreDown] > 3 || counts[msgStoreUp] != counts[msgStoreDown] {
		t.Errorf("the store's state changes were logged %d (down) and %d (up) times; want one line per change, a few changes", counts[msgStoreDown], counts[msgStoreUp])
	}
	for _, m := range []string{"journal write failed; the actor restarts from its journal", "actor cannot recover; it refuses all input", "campaign progress"} {
		if counts[m] > 0 {
			t.Errorf("%d lines %q: the outage is the store's to log, once", counts[m], m)
		}
	}
	if st := healthStatus(t, api); st != "SERVING_STATUS_SERVING" {
		t.Errorf("health once PostgreSQL is back: %s", st)
	}
	if after := taskSuccesses(t, api, token); after < before {
		t.Errorf("the campaign's successes went from %d (acknowledged before the crash) to %d", before, after)
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err, _ := s.wait(ctx); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}

	// The database itself holds every product acknowledged before the crash.
	st, err := pgstore.Open(ctx, dsn, pgstore.Options{SealKey: mustHex(t, sealHex)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, id := range acked {
		if _, err := st.GetProduct(ctx, id); err != nil {
			t.Errorf("product %s, acknowledged before the crash: %v", id, err)
		}
	}
	var inFlight []string
	if err := st.Active(ctx, persistence.KindDevice, func(id string) error { inFlight = append(inFlight, id); return nil }); err != nil || len(inFlight) != 0 {
		t.Errorf("devices with a job left in the journal: %v %v", inFlight, err)
	}
}

// logJournal logs the journal of device id (a simulated device has no
// registry entry, so no timeline through the API).
func logJournal(ctx context.Context, t *testing.T, dsn string, seal []byte, id string) {
	t.Helper()
	st, err := pgstore.Open(ctx, dsn, pgstore.Options{SealKey: seal})
	if err != nil {
		t.Logf("journal of %s: %v", id, err)
		return
	}
	defer st.Close()
	var b strings.Builder
	err = st.Load(ctx, persistence.Stream{Kind: persistence.KindDevice, ID: id}, 0, func(e persistence.Event) error {
		var ev messages.DeviceEvent
		if err := proto.Unmarshal(e.Payload, &ev); err != nil {
			return err
		}
		fmt.Fprintf(&b, "\n  %d %s %s", e.Seq, time.Unix(0, e.At).UTC().Format("15:04:05.000"), prototext.MarshalOptions{}.Format(&ev))
		return nil
	})
	t.Logf("journal of %s (%v):%s", id, err, b.String())
}

// readAPIAddr reads the API address serve wrote to addrs.json.
func readAPIAddr(t *testing.T, dir string) string {
	t.Helper()
	var addrs map[string]string
	b, err := os.ReadFile(filepath.Join(dir, "addrs.json"))
	if err != nil || json.Unmarshal(b, &addrs) != nil || addrs["api"] == "" {
		t.Fatalf("addrs.json: %s %v", b, err)
	}
	return addrs["api"]
}

// readToken reads serve's API token.
func readToken(t *testing.T, dir string) string {
	t.Helper()
	tok, err := os.ReadFile(filepath.Join(dir, "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(tok))
}

// apiPost calls an otafleet.v1 method with Connect JSON, as curl would.
func apiPost(t *testing.T, api, token, method, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest("POST", "http://"+api+"/otafleet.v1."+method, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// healthStatus asks the gRPC health service (Connect JSON) for the server's status.
func healthStatus(t *testing.T, api string) string {
	t.Helper()
	resp, err := http.Post("http://"+api+"/grpc.health.v1.Health/Check", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var res struct{ Status string }
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &res) != nil {
		t.Fatalf("health: HTTP %d %s", resp.StatusCode, b)
	}
	return res.Status
}

// taskSuccesses sums the succeeded sub-tasks of the simulated campaign's
// tasks as the API reports them.
func taskSuccesses(t *testing.T, api, token string) int {
	t.Helper()
	n := 0
	for _, p := range []string{"mqtt", "lwm2m-fota", "lwm2m-pcp"} {
		code, body := apiPost(t, api, token, "TaskService/GetTask", `{"task_id":"sim-campaign-`+p+`"}`)
		if code != http.StatusOK {
			t.Fatalf("GetTask sim-campaign-%s: HTTP %d %s", p, code, body)
		}
		var res map[string]any
		if err := json.Unmarshal(body, &res); err != nil {
			t.Fatal(err)
		}
		n += countSucceeded(res)
	}
	return n
}

// countSucceeded reads task.progress.success of a GetTask answer.
func countSucceeded(res map[string]any) int {
	task, _ := res["task"].(map[string]any)
	progress, _ := task["progress"].(map[string]any)
	n, _ := progress["success"].(float64)
	return int(n)
}

// mustHex decodes a hex string.
func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
