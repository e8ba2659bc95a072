package memtransport_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
)

// recorder is an Uplinks that records every input, per device.
type recorder struct {
	mu  sync.Mutex
	got map[string][]*messages.DeviceInput
	err error // returned by Deliver when set
}

func (r *recorder) Deliver(ctx context.Context, id string, in *messages.DeviceInput) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.got == nil {
		r.got = map[string][]*messages.DeviceInput{}
	}
	r.got[id] = append(r.got[id], in)
	return r.err
}

// kinds returns the device's uplinks since the last call, compactly printed.
func (r *recorder) kinds(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, in := range r.got[id] {
		out = append(out, compact(in.ProtoReflect()))
	}
	r.got[id] = nil
	return out
}

// compact prints a DeviceInput as kind{field:value ...}, fields in number order.
func compact(m protoreflect.Message) string {
	var parts []string
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		v := m.Get(fd)
		switch {
		case fd.ContainingOneof() != nil && fd.ContainingOneof().Name() == "kind":
			inner := compact(v.Message())
			if inner == "{}" {
				return string(fd.Name())
			}
			return string(fd.Name()) + inner
		case fd.Kind() == protoreflect.EnumKind:
			parts = append(parts, fmt.Sprintf("%s:%s", fd.Name(), fd.Enum().Values().ByNumber(v.Enum()).Name()))
		default:
			parts = append(parts, fmt.Sprintf("%s:%v", fd.Name(), v.Interface()))
		}
	}
	return "{" + strings.Join(parts, " ") + "}"
}

func equal(got []string, want ...string) bool { return slices.Equal(got, want) }

func newRecorded(t *testing.T) (*recorder, *memtransport.Transport, *clocktest.Clock) {
	t.Helper()
	clk := clocktest.New(start)
	rec := &recorder{}
	tr, err := memtransport.New(memtransport.Config{}, clk, rec, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return rec, tr, clk
}

func connect(t *testing.T, tr *memtransport.Transport, id string) {
	t.Helper()
	if err := tr.Connect(context.Background(), id); err != nil {
		t.Fatal(err)
	}
}

func send(t *testing.T, tr *memtransport.Transport, dl *messages.Downlink) {
	t.Helper()
	if err := tr.Send(context.Background(), dl); err != nil {
		t.Fatal(err)
	}
}

func read(id, path string) *messages.Downlink {
	return &messages.Downlink{DeviceId: id, Kind: &messages.Downlink_Lwm2MRead{Lwm2MRead: &messages.Lwm2MRead{Path: path}}}
}

func observe(id, path string) *messages.Downlink {
	return &messages.Downlink{DeviceId: id, Kind: &messages.Downlink_Lwm2MObserve{Lwm2MObserve: &messages.Lwm2MObserve{Path: path}}}
}

func check(t *testing.T, rec *recorder, id string, want ...string) {
	t.Helper()
	if got := rec.kinds(id); !equal(got, want...) {
		t.Fatalf("uplinks of %s:\n got  %q\n want %q", id, got, want)
	}
}

func TestNewAndAddErrors(t *testing.T) {
	clk := clocktest.New(start)
	if _, err := memtransport.New(memtransport.Config{}, clk, nil, nil); err == nil {
		t.Error("New without Uplinks succeeded")
	}
	_, tr, _ := newRecorded(t)
	for name, s := range map[string]memtransport.DeviceSpec{
		"no id":       {Protocol: messages.Protocol_PROTOCOL_MQTT},
		"no protocol": {ID: "x"},
		"mqtt queue":  {ID: "x", Protocol: messages.Protocol_PROTOCOL_MQTT, QueueMode: true},
		"psm no q":    {ID: "x", Protocol: messages.Protocol_PROTOCOL_LWM2M_FOTA, PSM: &memtransport.PSM{Awake: 1, Asleep: 1}},
		"negative":    {ID: "x", Protocol: messages.Protocol_PROTOCOL_LWM2M_FOTA, Behaviour: memtransport.Behaviour{FailDownloads: -1}},
		"pcp code":    {ID: "x", Protocol: messages.Protocol_PROTOCOL_LWM2M_PCP, Behaviour: memtransport.Behaviour{RefuseCode: 300}},
	} {
		if err := tr.Add(s); err == nil {
			t.Errorf("%s: Add succeeded", name)
		}
	}
	if err := tr.Add(spec("a", messages.Protocol_PROTOCOL_MQTT)); err != nil {
		t.Fatal(err)
	}
	if err := tr.Add(spec("a", messages.Protocol_PROTOCOL_MQTT)); !errors.Is(err, memtransport.ErrDuplicate) {
		t.Errorf("duplicate Add: %v", err)
	}
	if err := tr.Sleep(context.Background(), "a"); !errors.Is(err, memtransport.ErrNotQueueMode) {
		t.Errorf("Sleep of an MQTT device: %v", err)
	}
}

func TestSendErrors(t *testing.T) {
	_, tr, clk := newRecorded(t)
	ctx := context.Background()
	if err := tr.Add(spec("a", messages.Protocol_PROTOCOL_MQTT)); err != nil {
		t.Fatal(err)
	}
	q := &messages.Downlink{DeviceId: "a", Kind: &messages.Downlink_MqttVersionQuery{MqttVersionQuery: &messages.MqttVersionQuery{}}}
	if err := tr.Send(ctx, &messages.Downlink{DeviceId: "a"}); err == nil {
		t.Error("Send without kind succeeded")
	}
	if err := tr.Send(ctx, &messages.Downlink{DeviceId: "zz", Kind: q.Kind}); !errors.Is(err, memtransport.ErrUnknownDevice) {
		t.Errorf("Send to an unknown device: %v", err)
	}
	if err := tr.Send(ctx, q); !errors.Is(err, memtransport.ErrOffline) {
		t.Errorf("Send to an offline device: %v", err)
	}
	if s := tr.Stats(); s.Dropped != 1 {
		t.Errorf("Dropped %d, want 1", s.Dropped)
	}
	if ds := mustDevice(t, tr, "a"); ds.Counters.Dropped != 1 {
		t.Errorf("device Dropped %d, want 1", ds.Counters.Dropped)
	}
	connect(t, tr, "a")
	send(t, tr, q)
	// Offline while the downlink is in flight: lost.
	if err := tr.Disconnect(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute)
	if s := tr.Stats(); s.Downlinks != 0 {
		t.Errorf("Downlinks %d, want 0", s.Downlinks)
	}
	tr.Close()
	if err := tr.Send(ctx, q); !errors.Is(err, memtransport.ErrClosed) {
		t.Errorf("Send after Close: %v", err)
	}
	if err := tr.Connect(ctx, "a"); !errors.Is(err, memtransport.ErrClosed) {
		t.Errorf("Connect after Close: %v", err)
	}
	if n := clk.Pending(); n != 0 {
		t.Errorf("%d timers pending after Close", n)
	}
}

// TestFotaScript feeds object 5 downlinks by hand and checks the exact
// uplinks: observe answers first, the write is acknowledged before the
// download's State, notifications only for observed paths.
func TestFotaScript(t *testing.T) {
	rec, tr, clk := newRecorded(t)
	s := spec("f", messages.Protocol_PROTOCOL_LWM2M_FOTA)
	s.QueueMode = true
	if err := tr.Add(s); err != nil {
		t.Fatal(err)
	}
	connect(t, tr, "f")
	check(t, rec, "f", "connected{queue_mode:true}")
	send(t, tr, read("f", "/3/0/3"))
	send(t, tr, read("f", "/4/0"))
	send(t, tr, read("f", "/4/0/8"))
	send(t, tr, read("f", "/9/9/9"))
	clk.Advance(time.Second)
	check(t, rec, "f",
		"version_reported{fw_version:1.0}",
		"radio_reported{rsrp:-90 sinr:12 cell_id:cell-1}",
		"radio_reported{cell_id:cell-1}",
		"lwm2m_response{op:LWM2M_OP_READ path:/9/9/9 code:4.04}")

	send(t, tr, observe("f", "/5/0/3"))
	send(t, tr, observe("f", "/5/0/5"))
	send(t, tr, &messages.Downlink{DeviceId: "f", Kind: &messages.Downlink_Lwm2MWritePackageUri{Lwm2MWritePackageUri: &messages.Lwm2MWritePackageUri{Job: job(s.Protocol, "t", 1, "2.0")}}})
	clk.Advance(2 * time.Second)
	check(t, rec, "f",
		"fota_status{state:0}",
		"fota_status{update_result:0}",
		"lwm2m_response{op:LWM2M_OP_WRITE path:/5/0/1 success:true code:2.04}",
		"fota_status{state:1 update_result:0}",
		"fota_status{state:2 update_result:0}")

	// Asleep: an Execute is held until the device wakes.
	if err := tr.Sleep(context.Background(), "f"); err != nil {
		t.Fatal(err)
	}
	send(t, tr, &messages.Downlink{DeviceId: "f", Kind: &messages.Downlink_Lwm2MExecute{Lwm2MExecute: &messages.Lwm2MExecute{Path: "/5/0/2"}}})
	clk.Advance(time.Minute)
	check(t, rec, "f", "asleep")
	if c := mustDevice(t, tr, "f").Counters; c.Executes != 0 {
		t.Fatalf("Execute reached an asleep device")
	}
	if err := tr.Wake(context.Background(), "f"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Second)
	check(t, rec, "f",
		"uplink{registration_update:true}",
		"lwm2m_response{op:LWM2M_OP_EXECUTE path:/5/0/2 success:true code:2.04}",
		"fota_status{state:3 update_result:0}",
		"fota_status{state:0 update_result:1}")

	// A new session drops the observations: no notification without one.
	connect(t, tr, "f")
	send(t, tr, &messages.Downlink{DeviceId: "f", Kind: &messages.Downlink_Lwm2MWritePackageUri{Lwm2MWritePackageUri: &messages.Lwm2MWritePackageUri{Job: job(s.Protocol, "t", 2, "3.0")}}})
	clk.Advance(2 * time.Second)
	check(t, rec, "f", "connected{queue_mode:true}", "lwm2m_response{op:LWM2M_OP_WRITE path:/5/0/1 success:true code:2.04}")
	send(t, tr, read("f", "/5/0/3"))
	send(t, tr, read("f", "/3/0/3"))
	send(t, tr, &messages.Downlink{DeviceId: "f", Kind: &messages.Downlink_Lwm2MWrite{Lwm2MWrite: &messages.Lwm2MWrite{Path: "/5/0/1"}}})
	send(t, tr, read("f", "/5/0/3"))
	clk.Advance(time.Second)
	check(t, rec, "f",
		"fota_status{state:2}",
		"version_reported{fw_version:2.0}",
		"lwm2m_response{op:LWM2M_OP_WRITE path:/5/0/1 success:true code:2.04 fota_reset:true}",
		"fota_status{state:0}")
	ds := mustDevice(t, tr, "f")
	if ds.Counters.URIWrites != 2 || ds.Counters.Executes != 1 || ds.Counters.Upgrades != 1 || ds.Counters.Downloads != 2 {
		t.Fatalf("counters %+v", ds.Counters)
	}
}

func pcpDL(id string, k any) *messages.Downlink {
	dl := &messages.Downlink{DeviceId: id}
	switch v := k.(type) {
	case *messages.PcpQueryVersion:
		dl.Kind = &messages.Downlink_PcpQueryVersion{PcpQueryVersion: v}
	case *messages.PcpNotifyNewVersion:
		dl.Kind = &messages.Downlink_PcpNotifyNewVersion{PcpNotifyNewVersion: v}
	case *messages.PcpSegmentResponse:
		dl.Kind = &messages.Downlink_PcpSegmentResponse{PcpSegmentResponse: v}
	case *messages.PcpDownloadResultAck:
		dl.Kind = &messages.Downlink_PcpDownloadResultAck{PcpDownloadResultAck: v}
	case *messages.PcpExecute:
		dl.Kind = &messages.Downlink_PcpExecute{PcpExecute: v}
	case *messages.PcpUpgradeResultAck:
		dl.Kind = &messages.Downlink_PcpUpgradeResultAck{PcpUpgradeResultAck: v}
	}
	return dl
}

// TestPCPScript serves the PCP exchange by hand: the segment count comes
// from the 0x14; PCP travels only on an observed /19/0/0; a re-observation
// repeats the pending request.
func TestPCPScript(t *testing.T) {
	rec, tr, clk := newRecorded(t)
	if err := tr.Add(spec("p", messages.Protocol_PROTOCOL_LWM2M_PCP)); err != nil {
		t.Fatal(err)
	}
	connect(t, tr, "p")
	send(t, tr, pcpDL("p", &messages.PcpQueryVersion{}))
	clk.Advance(time.Second)
	check(t, rec, "p", "connected") // not observed: lost

	send(t, tr, observe("p", "/19/0/0"))
	send(t, tr, pcpDL("p", &messages.PcpQueryVersion{}))
	send(t, tr, pcpDL("p", &messages.PcpNotifyNewVersion{Version: "2.0", SegmentSize: 100, SegmentCount: 3}))
	clk.Advance(time.Second)
	check(t, rec, "p",
		"pcp_version{version:1.0}",
		"pcp_notify_response",
		"pcp_segment_request{version:2.0}")
	seg := func(n uint32) {
		send(t, tr, pcpDL("p", &messages.PcpSegmentResponse{SegmentNo: n, PackageId: "x", SegmentSize: 100}))
	}
	seg(0)
	seg(0) // duplicate: ignored
	clk.Advance(time.Second)
	check(t, rec, "p", "pcp_segment_request{version:2.0 segment_no:1}")
	// A new session (reboot): the device repeats its request once observed again.
	connect(t, tr, "p")
	send(t, tr, observe("p", "/19/0/0"))
	clk.Advance(time.Second)
	check(t, rec, "p", "connected", "pcp_segment_request{version:2.0 segment_no:1}")
	seg(1)
	clk.Advance(time.Second)
	seg(2)
	clk.Advance(time.Second)
	check(t, rec, "p", "pcp_segment_request{version:2.0 segment_no:2}", "pcp_download_result")
	send(t, tr, pcpDL("p", &messages.PcpDownloadResultAck{}))
	send(t, tr, pcpDL("p", &messages.PcpExecute{}))
	clk.Advance(2 * time.Second)
	check(t, rec, "p",
		"lwm2m_response{op:LWM2M_OP_WRITE path:/19/1/0 success:true code:2.04 pcp_code:22}", // the ack's PUT answered
		"pcp_execute_response", "pcp_upgrade_result{version:2.0}")
	send(t, tr, observe("p", "/19/0/0")) // no ack yet: 0x18 again
	clk.Advance(time.Second)
	check(t, rec, "p", "pcp_upgrade_result{version:2.0}")
	send(t, tr, pcpDL("p", &messages.PcpUpgradeResultAck{}))
	send(t, tr, observe("p", "/19/0/0"))
	send(t, tr, pcpDL("p", &messages.PcpExecute{})) // nothing to install
	clk.Advance(time.Second)
	check(t, rec, "p", "pcp_execute_response{result:10}")
	c := mustDevice(t, tr, "p").Counters
	if c.Segments != 3 || c.PCPExecutes != 2 || c.PCPNotifies != 1 || c.Upgrades != 1 {
		t.Fatalf("counters %+v", c)
	}
}

// TestMQTTScript: progress reports, the resent event continues the same
// download, a failure report carries the code.
func TestMQTTScript(t *testing.T) {
	rec, tr, clk := newRecorded(t)
	s := spec("m", messages.Protocol_PROTOCOL_MQTT)
	s.SwVersion = ""
	s.Behaviour.FailDownloads = 1
	if err := tr.Add(s); err != nil {
		t.Fatal(err)
	}
	connect(t, tr, "m")
	up := func(attempt uint32) *messages.Downlink {
		return &messages.Downlink{DeviceId: "m", Kind: &messages.Downlink_MqttUpgrade{MqttUpgrade: &messages.MqttUpgrade{Job: job(s.Protocol, "t", attempt, "2.0")}}}
	}
	send(t, tr, &messages.Downlink{DeviceId: "m", Kind: &messages.Downlink_MqttVersionQuery{MqttVersionQuery: &messages.MqttVersionQuery{}}})
	send(t, tr, up(1))
	clk.Advance(700 * time.Millisecond)
	send(t, tr, up(1)) // again: same download
	clk.Advance(2 * time.Second)
	check(t, rec, "m",
		"connected",
		"version_reported{fw_version:1.0}",
		"mqtt_progress{progress:0 version:1.0}",
		"mqtt_progress{progress:50 version:1.0}",
		"mqtt_progress{result_code:7 version:1.0 description:simulated download failure}")
	send(t, tr, up(2))
	clk.Advance(3 * time.Second)
	check(t, rec, "m",
		"mqtt_progress{progress:0 version:1.0}",
		"mqtt_progress{progress:50 version:1.0}",
		"mqtt_progress{progress:100 version:2.0}")
	if c := mustDevice(t, tr, "m").Counters; c.UpgradeEvents != 3 || c.Downloads != 2 || c.Upgrades != 1 {
		t.Fatalf("counters %+v", c)
	}
}

// TestWaitAndChanged: Wait returns once the condition holds, without sleeping.
func TestWaitAndChanged(t *testing.T) {
	_, tr, clk := newRecorded(t)
	if err := tr.Add(spec("a", messages.Protocol_PROTOCOL_MQTT)); err != nil {
		t.Fatal(err)
	}
	ch := tr.Changed()
	connect(t, tr, "a")
	select {
	case <-ch:
	default:
		t.Fatal("Changed not closed by a delivery")
	}
	done := make(chan error, 1)
	go func() {
		done <- tr.Wait(context.Background(), func(c memtransport.Counters) bool { return c.Upgrades == 1 })
	}()
	send(t, tr, &messages.Downlink{DeviceId: "a", Kind: &messages.Downlink_MqttUpgrade{MqttUpgrade: &messages.MqttUpgrade{Job: job(messages.Protocol_PROTOCOL_MQTT, "t", 1, "2.0")}}})
	clk.Advance(time.Minute)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := tr.Wait(ctx, func(memtransport.Counters) bool { return false }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with a cancelled context: %v", err)
	}
}

// TestDeliverErrorsCounted: an engine that refuses uplinks is counted, and
// Connect returns its error.
func TestDeliverErrorsCounted(t *testing.T) {
	rec, tr, _ := newRecorded(t)
	rec.err = errors.New("engine closed")
	if err := tr.Add(spec("a", messages.Protocol_PROTOCOL_MQTT)); err != nil {
		t.Fatal(err)
	}
	if err := tr.Connect(context.Background(), "a"); err == nil {
		t.Fatal("Connect hid Deliver's error")
	}
	if s := tr.Stats(); s.Uplinks != 1 || s.DeliverErrors != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// TestFleetRealClock runs a mixed fleet on the real clock with tiny delays:
// concurrent Sends from the engine, concurrent deliveries, snapshots taken
// meanwhile (run with -race). It waits with Wait, not sleeps.
func TestFleetRealClock(t *testing.T) {
	const n = 90
	clk := clock.Real()
	eng := newEngine(t, clk)
	ms := time.Millisecond
	tr, err := memtransport.New(memtransport.Config{Delays: memtransport.Delays{
		Network: ms, Response: ms, Download: 4 * ms, Segment: ms, Install: 2 * ms, Reconnect: 3 * ms,
	}}, clk, eng, nil)
	if err != nil {
		t.Fatal(err)
	}
	eng.tr = tr
	defer tr.Close()
	for i := range n {
		p := protocols[i%3]
		s := spec(fmt.Sprintf("d%02d", i), p)
		s.QueueMode = p != messages.Protocol_PROTOCOL_MQTT && i%2 == 0
		s.Behaviour.DropMidDownload = i % 5 / 4 // every fifth device drops once
		if err := tr.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := tr.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i, id := range tr.IDs() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			eng.start(id, job(protocols[i%3], "task", 1, "2.0"))
			_, _ = tr.Device(id)
			_ = tr.Stats()
		}()
	}
	wg.Wait()
	if err := tr.Wait(ctx, func(c memtransport.Counters) bool { return c.Upgrades == n }); err != nil {
		t.Fatal(err)
	}
	for range n {
		select {
		case <-eng.done:
		case <-ctx.Done():
			t.Fatal("not every device reported its outcome")
		}
	}
	for _, id := range tr.IDs() {
		checkOutcome(t, eng.last(id), success, none)
	}
}

// TestSetUplinks: a rebuilt engine takes over the same devices.
func TestSetUplinks(t *testing.T) {
	old, tr, clk := newRecorded(t)
	if err := tr.Add(spec("a", messages.Protocol_PROTOCOL_MQTT)); err != nil {
		t.Fatal(err)
	}
	connect(t, tr, "a")
	next := &recorder{}
	tr.SetUplinks(next)
	send(t, tr, &messages.Downlink{DeviceId: "a", Kind: &messages.Downlink_MqttVersionQuery{MqttVersionQuery: &messages.MqttVersionQuery{}}})
	clk.Advance(time.Second)
	check(t, old, "a", "connected")
	check(t, next, "a", "version_reported{fw_version:1.0 sw_version:1.0}")
}

// TestOddDownlinks: downlinks a device cannot serve get the LwM2M error a
// real client gives, or nothing.
func TestOddDownlinks(t *testing.T) {
	rec, tr, clk := newRecorded(t)
	for _, p := range protocols {
		if err := tr.Add(spec(short(p), p)); err != nil {
			t.Fatal(err)
		}
		connect(t, tr, short(p))
		rec.kinds(short(p))
	}
	exec := func(id, path string) *messages.Downlink {
		return &messages.Downlink{DeviceId: id, Kind: &messages.Downlink_Lwm2MExecute{Lwm2MExecute: &messages.Lwm2MExecute{Path: path}}}
	}
	send(t, tr, read("mqtt", "/3/0/3"))
	send(t, tr, pcpDL("fota", &messages.PcpQueryVersion{}))
	send(t, tr, exec("fota", "/5/0/2")) // nothing downloaded
	send(t, tr, exec("fota", "/1/0/4"))
	send(t, tr, observe("fota", "/19/0/0"))
	send(t, tr, exec("pcp", "/5/0/2"))
	clk.Advance(time.Second)
	check(t, rec, "mqtt")
	check(t, rec, "fota",
		"lwm2m_response{op:LWM2M_OP_EXECUTE path:/5/0/2 code:4.05}",
		"lwm2m_response{op:LWM2M_OP_EXECUTE path:/1/0/4 code:4.04}",
		"lwm2m_response{op:LWM2M_OP_OBSERVE path:/19/0/0 code:4.04}")
	check(t, rec, "pcp", "lwm2m_response{op:LWM2M_OP_EXECUTE path:/5/0/2 code:4.04}")
	if c := mustDevice(t, tr, "fota").Counters; c.Executes != 1 || c.Downlinks != 4 {
		t.Fatalf("counters %+v", c)
	}
}

// TestReportWakesAsleepDevice: a queue-mode device put to sleep while it
// installs wakes itself to report the result.
func TestReportWakesAsleepDevice(t *testing.T) {
	rec, tr, clk := newRecorded(t)
	s := spec("f", messages.Protocol_PROTOCOL_LWM2M_FOTA)
	s.QueueMode = true
	if err := tr.Add(s); err != nil {
		t.Fatal(err)
	}
	connect(t, tr, "f")
	send(t, tr, observe("f", "/5/0/3"))
	send(t, tr, &messages.Downlink{DeviceId: "f", Kind: &messages.Downlink_Lwm2MWritePackageUri{Lwm2MWritePackageUri: &messages.Lwm2MWritePackageUri{Job: job(s.Protocol, "t", 1, "2.0")}}})
	clk.Advance(2 * time.Second)
	send(t, tr, &messages.Downlink{DeviceId: "f", Kind: &messages.Downlink_Lwm2MExecute{Lwm2MExecute: &messages.Lwm2MExecute{Path: "/5/0/2"}}})
	clk.Advance(300 * time.Millisecond) // acknowledged, updating
	if err := tr.Sleep(context.Background(), "f"); err != nil {
		t.Fatal(err)
	}
	rec.kinds("f")
	clk.Advance(time.Second)
	check(t, rec, "f", "fota_status{state:0}")
	if ds := mustDevice(t, tr, "f"); !ds.Awake || ds.FwVersion != "2.0" {
		t.Fatalf("after the install: %+v", ds)
	}
}

// TestReadAnswerCarriesTag (issue 22): a read's answer carries the read's
// tag (request_tag), as the LwM2M transport echoes it, so the device
// machine can tell the answer of a read sent after an Execute from one
// sent before it; other reports carry none.
func TestReadAnswerCarriesTag(t *testing.T) {
	rec, tr, clk := newRecorded(t)
	if err := tr.Add(spec("f", messages.Protocol_PROTOCOL_LWM2M_FOTA)); err != nil {
		t.Fatal(err)
	}
	connect(t, tr, "f")
	tagged := read("f", "/5/0")
	tagged.GetLwm2MRead().Tag = 9
	send(t, tr, tagged)
	send(t, tr, read("f", "/3/0/3"))
	clk.Advance(time.Second)
	rec.mu.Lock()
	got := rec.got["f"]
	rec.mu.Unlock()
	if len(got) != 3 {
		t.Fatalf("uplinks %v", got)
	}
	if f := got[1].GetFotaStatus(); f == nil || f.State == nil || f.UpdateResult == nil || got[1].GetRequestTag() != 9 || !got[1].GetNoAck() {
		t.Fatalf("answer of the tagged read of /5/0: %v", got[1])
	}
	if got[2].GetVersionReported() == nil || got[2].GetRequestTag() != 0 {
		t.Fatalf("answer of the untagged read of /3/0/3: %v", got[2])
	}
}
