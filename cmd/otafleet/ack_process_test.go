package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	paho "github.com/eclipse/paho.mqtt.golang"
	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
	"github.com/otafleet/otafleet/rpc/otafleetv1/otafleetv1connect"
	"github.com/otafleet/otafleet/transport/mqtt/iotda"
)

// envBlockAppendsAfter, set only by the process tests for a child `serve`
// (this test binary), makes every journal append to a device stream after
// the first N block forever: the failpoint that holds reports between the
// actor's mailbox and the journal, where a crash lost acknowledged ones.
const envBlockAppendsAfter = "OTAFLEET_TEST_BLOCK_APPENDS_AFTER"

// blockAppendsAfter is the failpoint of envBlockAppendsAfter as a journal hook.
func blockAppendsAfter(n string) func(persistence.EventStore, *slog.Logger) persistence.EventStore {
	limit, err := strconv.Atoi(n)
	if err != nil || limit < 0 {
		panic(fmt.Sprintf("%s=%q: want a count", envBlockAppendsAfter, n))
	}
	return func(s persistence.EventStore, log *slog.Logger) persistence.EventStore {
		return &blockingJournal{EventStore: s, log: log, limit: int64(limit)}
	}
}

type blockingJournal struct {
	persistence.EventStore
	log   *slog.Logger
	limit int64
	n     atomic.Int64
	once  sync.Once
}

func (j *blockingJournal) Append(ctx context.Context, a persistence.Append) (uint64, error) {
	if a.Stream.Kind == persistence.KindDevice && j.n.Add(1) > j.limit {
		j.once.Do(func() { j.log.Warn("failpoint: journal appends blocked") })
		<-ctx.Done() // the engine appends with a background context: forever
		return 0, ctx.Err()
	}
	return j.EventStore.Append(ctx, a)
}

// TestProcessKillNineKeepsAcknowledgedReports (issue 18 item 10): a device
// publishes QoS 1 version reports, each twice (the second a duplicate), to a
// real `otafleet serve`; the test records every PUBACK; the server is killed
// with SIGKILL mid-stream; then every acknowledged report must be in the
// journal (the duplicate's first copy). With the failpoint the journal stops
// taking the device's events after 20 appends: before the fix the broker
// went on acknowledging the reports piling up in the actor's mailbox, and
// the kill lost every one of them.
func TestProcessKillNineKeepsAcknowledgedReports(t *testing.T) {
	testProcessKillNineKeepsAcknowledgedReports(t, false)
}

// TestProcessKillNineKeepsAcknowledgedReportsPostgres is
// TestProcessKillNineKeepsAcknowledgedReports on a PostgreSQL store (serve
// --store postgres://...): after the kill the database holds every
// acknowledged report.
func TestProcessKillNineKeepsAcknowledgedReportsPostgres(t *testing.T) {
	testProcessKillNineKeepsAcknowledgedReports(t, true)
}

func testProcessKillNineKeepsAcknowledgedReports(t *testing.T, postgres bool) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	t.Run("failpoint", func(t *testing.T) { killNineReports(t, postgres, 300, 20) })
	t.Run("mid-stream", func(t *testing.T) { killNineReports(t, postgres, 1500, -1) })
}

// killNineReports publishes reports distinct reports, each twice, and kills
// the server (on PostgreSQL when postgres is set): with blockAfter ≥ 0 once
// the journal blocks and either every report was acknowledged or a moment
// passed without it; otherwise once half of them are acknowledged.
func killNineReports(t *testing.T, postgres bool, reports, blockAfter int) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	store := newProcessStore(t, dir, postgres)
	var env []string
	if blockAfter >= 0 {
		env = append(env, fmt.Sprintf("%s=%d", envBlockAppendsAfter, blockAfter))
	}
	args := append([]string{"--data-dir", dir, "--api-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", "--coap-addr", "127.0.0.1:0",
		"--coaps-addr", "127.0.0.1:0", "--download-addr", "127.0.0.1:0", "--log-format", "json",
		"--mqtt-uplink-rate", "0"}, // a flood of reports: the per-device limit would refuse most of them
		store.args...)
	srv := startServerEnv(t, env, args...)
	srv.await(ctx, "serving", msg("serving"))
	blocked := make(chan struct{})
	go func() { // keep the log pipe drained; note the failpoint
		for m := range srv.lines {
			if m["msg"] == "failpoint: journal appends blocked" {
				close(blocked)
			}
		}
	}()
	var addrs map[string]string
	b, err := os.ReadFile(filepath.Join(dir, "addrs.json"))
	if err != nil || json.Unmarshal(b, &addrs) != nil || addrs["api"] == "" || addrs["mqtt"] == "" {
		t.Fatalf("addrs.json: %s %v", b, err)
	}
	tok, err := os.ReadFile(filepath.Join(dir, "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	hc := h2cClient(strings.TrimSpace(string(tok)))
	api := "http://" + addrs["api"]
	prod, err := otafleetv1connect.NewProductServiceClient(hc, api).CreateProduct(ctx, connect.NewRequest(&v1.CreateProductRequest{Name: "meters", Protocol: v1.Protocol_PROTOCOL_MQTT}))
	if err != nil {
		t.Fatal(err)
	}
	const device, secret = "kill-9", "secret-of-kill-9"
	sec := secret
	if _, err := otafleetv1connect.NewDeviceServiceClient(hc, api).CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{
		ProductId: prod.Msg.GetProduct().GetProductId(), Devices: []*v1.NewDevice{{DeviceId: device, Secret: &sec}},
	})); err != nil {
		t.Fatal(err)
	}

	id := iotda.NewClientID(device, clock.Real().Now()) // the server checks the hour against its clock
	cl := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + addrs["mqtt"]).SetClientID(id.String()).
		SetUsername(device).SetPassword(iotda.Password(secret, id.Timestamp)).SetKeepAlive(60 * time.Second).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).SetProtocolVersion(4))
	if ct := cl.Connect(); !ct.WaitTimeout(10*time.Second) || ct.Error() != nil {
		t.Fatalf("device connect: %v", ct.Error())
	}
	defer cl.Disconnect(0)

	// Publish each report twice, up to 64 publishes in flight; record PUBACKs.
	version := func(i int) string { return fmt.Sprintf("r-%05d", i) }
	reportTime := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	total := 2 * reports
	acked := make([]atomic.Bool, total)
	var nAcked atomic.Int64
	allAcked, half := make(chan struct{}), make(chan struct{})
	pending := make(chan paho.Token, 64)
	go func() {
		defer close(pending)
		for i := range total {
			v := version(i / 2)
			pending <- cl.Publish(iotda.UpTopic(device), 1, false, iotda.EncodeVersionReport(device, &v, nil, reportTime))
		}
	}()
	go func() {
		i := 0
		for pt := range pending {
			if pt.Wait(); pt.Error() == nil { // Wait returns when PUBACK came or the connection died
				acked[i].Store(true)
				switch nAcked.Add(1) {
				case int64(total) / 2:
					close(half)
				case int64(total):
					close(allAcked)
				}
			}
			i++
		}
	}()

	if blockAfter >= 0 {
		select {
		case <-blocked:
		case <-ctx.Done():
			t.Fatal("the failpoint never blocked the journal")
		}
		// Acknowledgements that still come now are of reports no journal holds.
		window, stop := context.WithTimeout(ctx, 3*time.Second)
		select {
		case <-allAcked:
		case <-window.Done():
		}
		stop()
	} else {
		select {
		case <-half:
		case <-ctx.Done():
			t.Fatalf("only %d of %d publishes acknowledged", nAcked.Load(), total)
		}
	}
	if err := srv.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-srv.exit
	got := int(nAcked.Load())

	st, err := store.open()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	journaled := map[string]bool{}
	err = st.Load(ctx, persistence.Stream{Kind: persistence.KindDevice, ID: device}, 0, func(e persistence.Event) error {
		ev := &messages.DeviceEvent{}
		if err := proto.Unmarshal(e.Payload, ev); err != nil {
			return err
		}
		if v := ev.GetVersionRecorded(); v != nil {
			journaled[v.GetFwVersion()] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var lost []string
	for i := range total {
		if acked[i].Load() && !journaled[version(i/2)] {
			lost = append(lost, version(i/2))
		}
	}
	t.Logf("%d of %d publishes acknowledged, %d reports journaled, at the kill", got, total, len(journaled))
	if got == 0 {
		t.Fatal("no publish was acknowledged: nothing was tested")
	}
	if len(lost) > 0 {
		t.Fatalf("%d acknowledged publishes are not in the journal (first %s)", len(lost), lost[0])
	}
}
