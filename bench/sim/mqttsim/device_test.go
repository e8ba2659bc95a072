package mqttsim

import (
	"context"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport/mqtt/iotda"
)

// t0 is the fake clock's start: a second before an hour changes, so that a
// reconnection after a delay needs a new client ID and password.
var t0 = time.Date(2025, 4, 14, 1, 59, 59, 0, time.UTC)

// startDevice starts a device on b and waits until the broker has its
// session (and, implicit, its subscription).
func startDevice(t *testing.T, b *testBroker, cfg Config) *Device {
	t.Helper()
	cfg.Broker = b.url
	if cfg.Secret == "" {
		cfg.Secret = "secret-of-" + cfg.DeviceID
	}
	b.setSecret(cfg.DeviceID, cfg.Secret)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	d, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(d.Stop)
	b.waitSession(t, cfg.DeviceID)
	return d
}

// handledCh returns a channel of the event types a device dealt with, and
// the hook to put in its Config.
func handledCh() (chan string, func(string)) {
	ch := make(chan string, 64)
	return ch, func(ev string) {
		select {
		case ch <- ev:
		default:
		}
	}
}

func waitHandled(t *testing.T, ch chan string, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	select {
	case ev := <-ch:
		if ev != want {
			t.Fatalf("device handled %q, want %q", ev, want)
		}
	case <-ctx.Done():
		t.Fatalf("device did not handle %q within %v", want, waitFor)
	}
}

// waitHandledAny waits until the device dealt with a publish, whatever it
// held.
func waitHandledAny(t *testing.T, ch chan string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	select {
	case <-ch:
	case <-ctx.Done():
		t.Fatalf("device did not handle a publish within %v", waitFor)
	}
}

func TestVersionQuery(t *testing.T) {
	for _, tc := range []struct {
		name      string
		subscribe bool
	}{
		{"implicit subscription", false},
		{"device subscribes", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBroker(t, !tc.subscribe)
			const id = "dev-vq"
			d := startDevice(t, b, Config{DeviceID: id, FwVersion: "fw1", SwVersion: "sw1", Subscribe: tc.subscribe})
			b.publish(t, id, iotda.EncodeVersionQuery(id, t0))
			vr := b.next(t, id).GetVersionReported()
			if vr == nil || vr.GetFwVersion() != "fw1" || vr.GetSwVersion() != "sw1" {
				t.Fatalf("version report %v, want fw1/sw1", vr)
			}
			if s := d.Stats(); s.VersionReports != 1 || s.ProgressReports != 0 {
				t.Errorf("Stats = %+v, want 1 version report", s)
			}
			if err := d.ReportVersion(); err != nil {
				t.Fatal(err)
			}
			if vr := b.next(t, id).GetVersionReported(); vr.GetFwVersion() != "fw1" {
				t.Fatalf("spontaneous version report %v", vr)
			}
		})
	}
}

func TestFirmwareUpgrade(t *testing.T) {
	b := newBroker(t, true)
	fs := newFileServer(t, 100_000, "tok-1")
	clk := clocktest.New(t0)
	upgraded := make(chan [2]string, 4)
	const id = "dev_fw" // an underscore, as device IDs may hold
	cfg := Config{
		DeviceID: id, FwVersion: "1.0", SwVersion: "s1", Clock: clk,
		OnUpgrade: func(kind, v string) { upgraded <- [2]string{kind, v} },
	}
	cfg.Broker = b.url
	cfg.Secret = "12345678"
	b.setSecret(id, cfg.Secret)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	d, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	if cid, want := b.waitSession(t, id), iotda.NewClientID(id, t0).String(); cid != want {
		t.Errorf("client ID %q, want %q", cid, want)
	}

	b.publish(t, id, iotda.EncodeUpgrade(id, false, fs.upgradeParas("2.0"), t0))
	reports := b.untilFinal(t, id)
	final := reports[len(reports)-1]
	if final.GetResultCode() != 0 || final.GetProgress() != 100 || final.GetVersion() != "2.0" {
		t.Fatalf("final report %v, want result 0, progress 100, version 2.0", final)
	}
	inter := reports[:len(reports)-1]
	if len(inter) < 2 {
		t.Errorf("%d intermediate progress reports, want a few", len(inter))
	}
	last := int32(-1)
	for _, p := range inter {
		if p.GetResultCode() != 0 || p.Progress == nil || p.GetProgress() < last || p.GetProgress() > 99 || p.GetVersion() != "1.0" {
			t.Errorf("intermediate report %v: want result 0, progress 0..99 rising, the current version 1.0", p)
		}
		last = p.GetProgress()
	}
	if inter[0].GetProgress() != 0 {
		t.Errorf("first progress %d, want 0", inter[0].GetProgress())
	}
	if fw, sw := d.Versions(); fw != "2.0" || sw != "s1" {
		t.Errorf("Versions() = %q, %q, want 2.0, s1", fw, sw)
	}
	want := Stats{ProgressReports: len(reports), Downloads: 1, Upgrades: 1, BytesDownloaded: 100_000}
	if s := d.Stats(); s != want {
		t.Errorf("Stats = %+v, want %+v", s, want)
	}
	select {
	case u := <-upgraded:
		if u != [2]string{"firmware", "2.0"} {
			t.Errorf("OnUpgrade(%q, %q), want firmware, 2.0", u[0], u[1])
		}
	default:
		t.Error("OnUpgrade not called before the final report")
	}
	if r := fs.requests(); !reflect.DeepEqual(r, []string{""}) {
		t.Errorf("download requests with Range %q, want one without", r)
	}
	// The device reports its new version.
	b.publish(t, id, iotda.EncodeVersionQuery(id, t0))
	if vr := b.next(t, id).GetVersionReported(); vr.GetFwVersion() != "2.0" || vr.GetSwVersion() != "s1" {
		t.Errorf("version report after the upgrade %v", vr)
	}
}

func TestSoftwareUpgradeSkipProgress(t *testing.T) {
	b := newBroker(t, true)
	fs := newFileServer(t, 5000, "tok-2")
	const id = "dev-sw"
	d := startDevice(t, b, Config{DeviceID: id, FwVersion: "f1", SwVersion: "s1", Behaviour: Behaviour{SkipProgress: true}})
	p := fs.upgradeParas("s2")
	p.Sign = strings.ToUpper(p.Sign) // case-insensitive
	b.publish(t, id, iotda.EncodeUpgrade(id, true, p, t0))
	reports := b.untilFinal(t, id)
	if len(reports) != 1 {
		t.Fatalf("reports %v, want only the final one", reports)
	}
	if r := reports[0]; r.GetResultCode() != 0 || r.GetProgress() != 100 || r.GetVersion() != "s2" {
		t.Fatalf("final report %v", r)
	}
	if fw, sw := d.Versions(); fw != "f1" || sw != "s2" {
		t.Errorf("Versions() = %q, %q, want f1, s2", fw, sw)
	}
}

func TestResumeAfterDrop(t *testing.T) {
	b := newBroker(t, true)
	fs := newFileServer(t, 100_000, "tok-3")
	clk := clocktest.New(t0)
	const id = "dev-drop"
	const delay = 2 * time.Second // past the hour: the reconnection needs a new client ID
	d := startDevice(t, b, Config{DeviceID: id, FwVersion: "1.0", Clock: clk,
		Behaviour: Behaviour{DropAfterBytes: 1000, ReconnectDelay: delay}})

	b.publish(t, id, iotda.EncodeUpgrade(id, false, fs.upgradeParas("2.0"), t0))
	if p := b.nextProgress(t, id); p.GetProgress() != 0 {
		t.Fatalf("first report %v, want progress 0", p)
	}
	b.waitGone(t, id) // the drop: the device now waits delay on its clock
	if r := fs.requests(); len(r) != 1 {
		t.Fatalf("requests before the reconnection %q, want 1", r)
	}
	clk.Advance(delay)
	if cid, want := b.waitSession(t, id), iotda.NewClientID(id, t0.Add(delay)).String(); cid != want {
		t.Errorf("client ID after the reconnection %q, want %q", cid, want)
	}
	reports := b.untilFinal(t, id)
	if f := reports[len(reports)-1]; f.GetResultCode() != 0 || f.GetVersion() != "2.0" {
		t.Fatalf("final report %v, want success with 2.0", f)
	}
	if r := fs.requests(); !reflect.DeepEqual(r, []string{"", "bytes=1000-"}) {
		t.Errorf("download requests with Range %q, want none then bytes=1000-", r)
	}
	s := d.Stats()
	if s.Resumes != 1 || s.Downloads != 1 || s.Upgrades != 1 || s.BytesDownloaded != 100_000 {
		t.Errorf("Stats = %+v, want 1 resume, 1 download, 1 upgrade, 100000 bytes", s)
	}
}

// upgradeOutcome runs one firmware upgrade 1.0 → 2.0 and returns the
// device, its reports and the file server's requests.
func upgradeOutcome(t *testing.T, bh Behaviour, token string) (*Device, []*messages.MqttProgress, []string) {
	t.Helper()
	b := newBroker(t, true)
	fs := newFileServer(t, 70_000, "tok-ok")
	const id = "dev-out"
	d := startDevice(t, b, Config{DeviceID: id, FwVersion: "1.0", Behaviour: bh})
	p := fs.upgradeParas("2.0")
	p.AccessToken = token
	b.publish(t, id, iotda.EncodeUpgrade(id, false, p, t0))
	return d, b.untilFinal(t, id), fs.requests()
}

func TestUpgradeFailures(t *testing.T) {
	for _, tc := range []struct {
		name      string
		bh        Behaviour
		token     string
		code      int32
		desc      string // in the description
		requests  int
		downloads int
	}{
		{"corrupt download", Behaviour{CorruptDownload: true}, "tok-ok", 7, "SHA-256", 1, 1},
		{"fail at once", Behaviour{FailWith: 5}, "tok-ok", 5, "simulated", 0, 0},
		{"fail after download", Behaviour{FailWith: 5, FailAfterDownload: true}, "tok-ok", 5, "after download", 1, 1},
		{"unauthorized", Behaviour{}, "tok-bad", 6, "401", 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, reports, requests := upgradeOutcome(t, tc.bh, tc.token)
			f := reports[len(reports)-1]
			if f.GetResultCode() != tc.code || f.GetVersion() != "1.0" || !strings.Contains(f.GetDescription(), tc.desc) {
				t.Errorf("final report %v, want result_code %d, version 1.0, description with %q", f, tc.code, tc.desc)
			}
			if len(requests) != tc.requests {
				t.Errorf("%d download requests, want %d", len(requests), tc.requests)
			}
			if fw, _ := d.Versions(); fw != "1.0" {
				t.Errorf("firmware %q after a failure, want 1.0", fw)
			}
			s := d.Stats()
			if s.Failures != 1 || s.Upgrades != 0 || s.Downloads != tc.downloads || s.ProgressReports != len(reports) {
				t.Errorf("Stats = %+v, want 1 failure, %d downloads, %d progress reports", s, tc.downloads, len(reports))
			}
		})
	}
}

func TestWrongFileSize(t *testing.T) {
	b := newBroker(t, true)
	fs := newFileServer(t, 3000, "tok")
	const id = "dev-size"
	startDevice(t, b, Config{DeviceID: id, FwVersion: "1.0", Behaviour: Behaviour{SkipProgress: true}})
	for _, size := range []int64{2999, 3001} {
		p := fs.upgradeParas("2.0")
		p.FileSize = size
		p.Sign = ""
		b.publish(t, id, iotda.EncodeUpgrade(id, false, p, t0))
		if f := b.nextProgress(t, id); f.GetResultCode() != 7 {
			t.Errorf("file_size %d of a 3000-byte package: report %v, want result_code 7", size, f)
		}
	}
}

func TestNeverAnswer(t *testing.T) {
	b := newBroker(t, true)
	fs := newFileServer(t, 1000, "tok")
	handled, hook := handledCh()
	const id = "dev-mute"
	cfg := Config{DeviceID: id, FwVersion: "1.0", Behaviour: Behaviour{NeverAnswer: true}}
	cfg.handled = hook
	d := startDevice(t, b, cfg)
	b.publish(t, id, iotda.EncodeVersionQuery(id, t0))
	waitHandled(t, handled, iotda.EventVersionQuery)
	b.publish(t, id, iotda.EncodeUpgrade(id, false, fs.upgradeParas("2.0"), t0))
	waitHandled(t, handled, iotda.EventFirmwareUpgrade)
	// Whatever it published would come before this explicit report.
	if err := d.ReportVersion(); err != nil {
		t.Fatal(err)
	}
	if in := b.next(t, id); in.GetVersionReported() == nil {
		t.Fatalf("a NeverAnswer device published %v", in)
	}
	if r := fs.requests(); len(r) != 0 {
		t.Errorf("a NeverAnswer device downloaded: %q", r)
	}
	if s := d.Stats(); s != (Stats{VersionReports: 1}) {
		t.Errorf("Stats = %+v, want only the explicit version report", s)
	}
}

func TestBusyAndRepeatedEvent(t *testing.T) {
	b := newBroker(t, true)
	fs := newFileServer(t, 10_000, "tok")
	fs.hold = make(chan struct{})
	handled, hook := handledCh()
	const id = "dev-busy"
	cfg := Config{DeviceID: id, FwVersion: "1.0"}
	cfg.handled = hook
	d := startDevice(t, b, cfg)

	ev := iotda.EncodeUpgrade(id, false, fs.upgradeParas("2.0"), t0)
	b.publish(t, id, ev)
	waitHandled(t, handled, iotda.EventFirmwareUpgrade)
	if p := b.nextProgress(t, id); p.GetProgress() != 0 {
		t.Fatalf("first report %v", p)
	}
	fs.waitRequest(t) // the download hangs on hold
	b.publish(t, id, ev)
	waitHandled(t, handled, iotda.EventFirmwareUpgrade)
	b.publish(t, id, iotda.EncodeUpgrade(id, false, fs.upgradeParas("3.0"), t0))
	waitHandled(t, handled, iotda.EventFirmwareUpgrade)
	if p := b.nextProgress(t, id); p.GetResultCode() != 1 || p.GetVersion() != "1.0" {
		t.Fatalf("report to another upgrade while busy %v, want result_code 1 with 1.0", p)
	}
	close(fs.hold)
	reports := b.untilFinal(t, id)
	if f := reports[len(reports)-1]; f.GetResultCode() != 0 || f.GetVersion() != "2.0" {
		t.Fatalf("final report %v", f)
	}
	if r := fs.requests(); len(r) != 1 {
		t.Errorf("download requests %q, want 1: the repeated event is ignored", r)
	}
	if s := d.Stats(); s.Upgrades != 1 || s.Failures != 0 || s.Downloads != 1 {
		t.Errorf("Stats = %+v", s)
	}
}

func TestMalformedInputIgnored(t *testing.T) {
	b := newBroker(t, true)
	handled, hook := handledCh()
	const id = "dev-junk"
	cfg := Config{DeviceID: id, FwVersion: "1.0", Behaviour: Behaviour{SkipProgress: true, ReconnectDelay: time.Millisecond}}
	cfg.handled = hook
	startDevice(t, b, cfg)
	for _, p := range []string{
		``,
		`not json`,
		`[]`,
		`null`,
		`{"services":null}`,
		`{"services":[null]}`,
		`{"services":[{"service_id":"$ota","event_type":"firmware_upgrade"}]}`,
		`{"services":[{"service_id":"$ota","event_type":"firmware_upgrade","paras":null}]}`,
		`{"services":[{"service_id":"$ota","event_type":"software_upgrade","paras":{"version":5}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"firmware_upgrade","paras":{"file_size":1e999}}]}`,
		`{"services":[{"service_id":"$time_sync","event_type":"time_sync_response","paras":{}}]}`,
		`{"services":[{"service_id":"$ota","event_type":"firmware_upgrade_v2","paras":{"version":"9"}}]}`,
		`{"object_device_id":"someone-else","services":[{"service_id":"$ota","event_type":"version_query"}]}`,
	} {
		b.publish(t, id, []byte(p))
		waitHandledAny(t, handled)
	}
	b.publish(t, id, iotda.EncodeVersionQuery(id, t0))
	waitHandled(t, handled, iotda.EventVersionQuery)
	if in := b.next(t, id); in.GetVersionReported() == nil {
		t.Fatalf("first uplink %v, want the version report: malformed input must be ignored", in)
	}
	// Valid but useless paras: reported as a failed download.
	for _, url := range []string{"", "http://[::1", "http://127.0.0.1:1/closed"} {
		b.publish(t, id, iotda.EncodeUpgrade(id, false, iotda.UpgradeParas{Version: "2.0", URL: url}, t0))
		if f := b.nextProgress(t, id); f.GetResultCode() != 6 || f.GetVersion() != "1.0" {
			t.Errorf("url %q: report %v, want result_code 6", url, f)
		}
	}
}

func TestStopDuringDownload(t *testing.T) {
	b := newBroker(t, true)
	fs := newFileServer(t, 10_000, "tok")
	fs.hold = make(chan struct{})
	defer close(fs.hold)
	const id = "dev-stop"
	d := startDevice(t, b, Config{DeviceID: id, FwVersion: "1.0"})
	b.publish(t, id, iotda.EncodeUpgrade(id, false, fs.upgradeParas("2.0"), t0))
	fs.waitRequest(t)
	d.Stop() // must not hang on the download
	d.Stop()
	b.waitGone(t, id)
	if err := d.ReportVersion(); err == nil {
		t.Error("ReportVersion after Stop: no error")
	}
}

func TestConnackRefused(t *testing.T) {
	b := newBroker(t, true)
	const id = "dev-refused"
	b.setSecret(id, "right")
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	d, err := Start(ctx, Config{Broker: b.url, DeviceID: id, Secret: "wrong"})
	if err == nil {
		d.Stop()
		t.Fatal("Start with a wrong secret: no error")
	}
	t.Logf("Start: %v", err)
	if ctx.Err() != nil {
		t.Error("Start retried until the deadline")
	}
}

func TestConnectNoBroker(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if d, err := Start(ctx, Config{Broker: "tcp://" + addr, DeviceID: "dev-x", Secret: "s"}); err == nil {
		d.Stop()
		t.Fatal("Start without a broker: no error")
	}
	if _, err := Start(ctx, Config{Broker: "ws://" + addr, DeviceID: "dev-x"}); err == nil {
		t.Fatal("Start with a ws:// broker: no error")
	}
}

func TestContentRangeStart(t *testing.T) {
	for in, want := range map[string]int64{
		"bytes 1000-99999/100000": 1000,
		"bytes 0-0/1":             0,
		"bytes */100":             -1,
		"":                        -1,
		"bytes -5-9/10":           -1,
		"items 1-2/3":             -1,
	} {
		got, ok := contentRangeStart(in)
		if !ok {
			got = -1
		}
		if got != want {
			t.Errorf("contentRangeStart(%q) = %d, want %d", in, got, want)
		}
	}
}

// eventLog collects the events a device reports through Config.OnEvent,
// with the device's versions as the callback saw them (the callback reads
// them: it must not run under a lock of the device).
type eventLog struct {
	dev atomic.Pointer[Device]
	ch  chan loggedEvent
}

type loggedEvent struct {
	Event
	fw, sw string
}

func newEventLog() *eventLog { return &eventLog{ch: make(chan loggedEvent, 256)} }

// onEvent is the Config.OnEvent of the log.
func (l *eventLog) onEvent(ev Event) {
	e := loggedEvent{Event: ev}
	if d := l.dev.Load(); d != nil {
		e.fw, e.sw = d.Versions()
		_ = d.Stats()
	}
	select {
	case l.ch <- e:
	default:
	}
}

func (l *eventLog) next(t *testing.T) loggedEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	select {
	case e := <-l.ch:
		return e
	case <-ctx.Done():
		t.Fatalf("no device event within %v", waitFor)
		return loggedEvent{}
	}
}

// expect waits for the next events and checks them, written "kind" or,
// with a code, "kind:code"; it returns them.
func (l *eventLog) expect(t *testing.T, want ...string) []loggedEvent {
	t.Helper()
	var got []loggedEvent
	var kinds []string
	for range want {
		e := l.next(t)
		got = append(got, e)
		k := e.Kind
		if e.Code != 0 {
			k += ":" + strconv.Itoa(e.Code)
		}
		kinds = append(kinds, k)
	}
	if !reflect.DeepEqual(kinds, want) {
		t.Fatalf("device events %q, want %q", kinds, want)
	}
	return got
}

// none checks that no further event is waiting.
func (l *eventLog) none(t *testing.T) {
	t.Helper()
	select {
	case e := <-l.ch:
		t.Fatalf("unexpected device event %+v", e.Event)
	default:
	}
}

// startLogged starts a device whose events go to a new log.
func startLogged(t *testing.T, b *testBroker, cfg Config) (*Device, *eventLog) {
	t.Helper()
	l := newEventLog()
	cfg.OnEvent = l.onEvent
	d := startDevice(t, b, cfg)
	l.dev.Store(d)
	return d, l
}

// advancePast moves the fake clock by step at a time until it reaches the
// next timer's deadline (the device's pace timer: its only timer in these
// tests), which then fires.
func advancePast(t *testing.T, clk *clocktest.Clock, step time.Duration) {
	t.Helper()
	deadline, ok := clk.NextDeadline()
	if !ok {
		t.Fatal("no timer armed")
	}
	for clk.Now().Before(deadline) {
		clk.Advance(step)
	}
}

func TestThinkTime(t *testing.T) {
	b := newBroker(t, true)
	fs := newFileServer(t, 10_000, "tok")
	clk := clocktest.New(t0)
	waiting, hook := handledCh()
	const id, think = "dev-think", 30 * time.Second
	cfg := Config{DeviceID: id, FwVersion: "1.0", Clock: clk, Behaviour: Behaviour{ThinkTime: think}}
	cfg.waiting = hook
	startDevice(t, b, cfg)
	b.publish(t, id, iotda.EncodeUpgrade(id, false, fs.upgradeParas("2.0"), t0))
	waitHandled(t, waiting, "thinking")
	clk.Advance(think - time.Millisecond)
	if r := fs.requests(); len(r) != 0 {
		t.Fatalf("download requests %q before ThinkTime passed", r)
	}
	select {
	case p := <-b.upCh(id):
		t.Fatalf("the device published %s before ThinkTime passed", p)
	default:
	}
	clk.Advance(time.Millisecond)
	reports := b.untilFinal(t, id)
	if p := reports[0]; p.GetProgress() != 0 || p.GetResultCode() != 0 {
		t.Errorf("first report %v, want progress 0", p)
	}
	if f := reports[len(reports)-1]; f.GetResultCode() != 0 || f.GetVersion() != "2.0" {
		t.Fatalf("final report %v, want success with 2.0", f)
	}
}

func TestThinkTimeNotForFailureAtOnce(t *testing.T) {
	b := newBroker(t, true)
	fs := newFileServer(t, 1000, "tok")
	const id = "dev-think-fail"
	startDevice(t, b, Config{DeviceID: id, FwVersion: "1.0", Clock: clocktest.New(t0), Behaviour: Behaviour{ThinkTime: time.Hour, FailWith: 9}})
	b.publish(t, id, iotda.EncodeUpgrade(id, false, fs.upgradeParas("2.0"), t0))
	if p := b.nextProgress(t, id); p.GetResultCode() != 9 {
		t.Fatalf("report %v, want result_code 9 at once", p)
	}
}

func TestBytesPerSecond(t *testing.T) {
	const (
		size  = 100_000
		rate  = 20_000
		total = 5 * time.Second // size at rate
		step  = 100 * time.Millisecond
	)
	b := newBroker(t, true)
	fs := newFileServer(t, size, "tok")
	clk := clocktest.New(t0)
	waiting, hook := handledCh()
	const id = "dev-rate"
	cfg := Config{DeviceID: id, FwVersion: "1.0", Clock: clk, Behaviour: Behaviour{BytesPerSecond: rate}}
	cfg.waiting = hook
	d, events := startLogged(t, b, cfg)
	b.publish(t, id, iotda.EncodeUpgrade(id, false, fs.upgradeParas("2.0"), t0))
	start := clk.Now()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	for done := false; !done; {
		// The device parks on its pace timer, or completes the download.
		select {
		case w := <-waiting:
			if w != "paced" {
				t.Fatalf("device waits for %q", w)
			}
			if el := clk.Since(start); el >= total {
				t.Fatalf("still downloading after %v (%d bytes), want %v", el, d.Stats().BytesDownloaded, total)
			}
			advancePast(t, clk, step)
		case e := <-events.ch:
			if e.Kind == EventDownloadDone {
				if e.Bytes != size {
					t.Errorf("download-done of %d bytes, want %d", e.Bytes, size)
				}
				done = true
			}
		case <-ctx.Done():
			t.Fatalf("download not done within %v (clock at %v)", waitFor, clk.Since(start))
		}
	}
	if el := clk.Since(start); el < total-step || el > total+step {
		t.Errorf("download of %d bytes at %d B/s took %v of clock time, want about %v", size, rate, el, total)
	}
	reports := b.untilFinal(t, id)
	if f := reports[len(reports)-1]; f.GetResultCode() != 0 || f.GetVersion() != "2.0" {
		t.Fatalf("final report %v, want success with 2.0", f)
	}
}

func TestBytesPerSecondStop(t *testing.T) {
	b := newBroker(t, true)
	fs := newFileServer(t, 10_000, "tok")
	waiting, hook := handledCh()
	const id = "dev-slow"
	cfg := Config{DeviceID: id, FwVersion: "1.0", Clock: clocktest.New(t0), Behaviour: Behaviour{BytesPerSecond: 1, SkipProgress: true}}
	cfg.waiting = hook
	d := startDevice(t, b, cfg)
	b.publish(t, id, iotda.EncodeUpgrade(id, false, fs.upgradeParas("2.0"), t0))
	waitHandled(t, waiting, "paced")
	d.Stop() // must not hang on the wait
	b.waitGone(t, id)
}

// needLoopback2 skips a test where 127.0.0.2 cannot be bound (Linux routes
// all of 127/8 to the loopback interface; other systems may not).
func needLoopback2(t *testing.T) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("cannot bind 127.0.0.2: %v", err)
	}
	l.Close()
}

// countingTransport counts the requests of an HTTP client.
type countingTransport struct{ n atomic.Int32 }

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return http.DefaultTransport.RoundTrip(r)
}

func TestLocalAddr(t *testing.T) {
	needLoopback2(t)
	b := newBroker(t, true)
	fs := newFileServer(t, 5000, "tok")
	host := func(addr string) string {
		h, _, _ := net.SplitHostPort(addr)
		return h
	}
	const id = "dev-local"
	startDevice(t, b, Config{DeviceID: id, FwVersion: "1.0", LocalAddr: "127.0.0.2", Behaviour: Behaviour{SkipProgress: true}})
	if r := b.remoteAddrs(id); len(r) != 1 || host(r[0]) != "127.0.0.2" {
		t.Fatalf("the broker saw the device at %q, want 127.0.0.2", r)
	}
	b.publish(t, id, iotda.EncodeUpgrade(id, false, fs.upgradeParas("2.0"), t0))
	if f := b.nextProgress(t, id); f.GetResultCode() != 0 {
		t.Fatalf("report %v", f)
	}
	if r := fs.remoteAddrs(); len(r) != 1 || host(r[0]) != "127.0.0.2" {
		t.Fatalf("the file server saw the download from %q, want 127.0.0.2", r)
	}

	// A given HTTPClient is left alone.
	const id2 = "dev-local-own-client"
	ct := &countingTransport{}
	startDevice(t, b, Config{DeviceID: id2, FwVersion: "1.0", LocalAddr: "127.0.0.2", HTTPClient: &http.Client{Transport: ct},
		Behaviour: Behaviour{SkipProgress: true}})
	if r := b.remoteAddrs(id2); len(r) != 1 || host(r[0]) != "127.0.0.2" {
		t.Fatalf("the broker saw the device at %q, want 127.0.0.2", r)
	}
	b.publish(t, id2, iotda.EncodeUpgrade(id2, false, fs.upgradeParas("2.0"), t0))
	if f := b.nextProgress(t, id2); f.GetResultCode() != 0 {
		t.Fatalf("report %v", f)
	}
	if r := fs.remoteAddrs(); len(r) != 2 || host(r[1]) != "127.0.0.1" || ct.n.Load() != 1 {
		t.Errorf("download from %q through the given client %d times; want one from 127.0.0.1", r, ct.n.Load())
	}

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if _, err := Start(ctx, Config{Broker: b.url, DeviceID: "x", LocalAddr: "127.0.0.2:1883"}); err == nil {
		t.Error("Start with LocalAddr host:port: no error")
	}
}

func TestEvents(t *testing.T) {
	t.Run("success", func(t *testing.T) {
		b := newBroker(t, true)
		fs := newFileServer(t, 40_000, "tok")
		const id = "dev-ev"
		events := newEventLog()
		cfg := Config{DeviceID: id, FwVersion: "1.0", Clock: clocktest.New(t0), OnEvent: events.onEvent,
			// OnUpgrade comes in the events' order: after installed.
			OnUpgrade: func(kind, v string) { events.onEvent(Event{Kind: "OnUpgrade", Upgrade: kind, Version: v}) }}
		d := startDevice(t, b, cfg)
		events.dev.Store(d)
		b.publish(t, id, iotda.EncodeUpgrade(id, false, fs.upgradeParas("2.0"), t0))
		b.untilFinal(t, id)
		got := events.expect(t, EventCommand, EventDownloadStart, EventDownloadDone, EventInstalled, "OnUpgrade", EventReported)
		for _, e := range got {
			if e.Upgrade != "firmware" || e.Version != "2.0" {
				t.Errorf("event %+v, want firmware 2.0", e.Event)
			}
			if e.Kind != "OnUpgrade" && !e.Time.Equal(t0) {
				t.Errorf("event %+v at %v, want the device's clock %v", e.Event, e.Time, t0)
			}
		}
		if got[2].Bytes != 40_000 {
			t.Errorf("download-done of %d bytes, want 40000", got[2].Bytes)
		}
		if got[3].fw != "2.0" {
			t.Errorf("installed: the device's firmware %q, want 2.0", got[3].fw)
		}
		events.none(t)
	})
	for _, tc := range []struct {
		name  string
		bh    Behaviour
		token string
		want  []string
	}{
		{"fail at once", Behaviour{FailWith: 5}, "tok", []string{EventCommand, "failed:5", "reported:5"}},
		{"fail after download", Behaviour{FailWith: 5, FailAfterDownload: true}, "tok",
			[]string{EventCommand, EventDownloadStart, EventDownloadDone, "failed:5", "reported:5"}},
		{"corrupt download", Behaviour{CorruptDownload: true}, "tok",
			[]string{EventCommand, EventDownloadStart, EventDownloadDone, "failed:7", "reported:7"}},
		{"unauthorized", Behaviour{}, "tok-bad", []string{EventCommand, EventDownloadStart, "failed:6", "reported:6"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBroker(t, true)
			fs := newFileServer(t, 5000, "tok")
			const id = "dev-ev-fail"
			_, events := startLogged(t, b, Config{DeviceID: id, FwVersion: "1.0", Behaviour: tc.bh})
			p := fs.upgradeParas("2.0")
			p.AccessToken = tc.token
			b.publish(t, id, iotda.EncodeUpgrade(id, true, p, t0))
			b.untilFinal(t, id)
			for _, e := range events.expect(t, tc.want...) {
				if e.Upgrade != "software" || e.Version != "2.0" {
					t.Errorf("event %+v, want software 2.0", e.Event)
				}
			}
			events.none(t)
		})
	}
	t.Run("busy", func(t *testing.T) {
		b := newBroker(t, true)
		fs := newFileServer(t, 5000, "tok")
		fs.hold = make(chan struct{})
		const id = "dev-ev-busy"
		_, events := startLogged(t, b, Config{DeviceID: id, FwVersion: "1.0", Behaviour: Behaviour{SkipProgress: true}})
		ev := iotda.EncodeUpgrade(id, false, fs.upgradeParas("2.0"), t0)
		b.publish(t, id, ev)
		events.expect(t, EventCommand, EventDownloadStart)
		fs.waitRequest(t)
		b.publish(t, id, ev) // a repeat: ignored
		b.publish(t, id, iotda.EncodeUpgrade(id, false, fs.upgradeParas("3.0"), t0))
		got := events.expect(t, EventCommand, EventCommand, "failed:1", "reported:1")
		if got[0].Version != "2.0" || got[1].Version != "3.0" || got[3].Version != "3.0" {
			t.Errorf("events %+v, want the repeat of 2.0, then 3.0 answered busy", got)
		}
		close(fs.hold)
		b.untilFinal(t, id) // the busy answer
		b.untilFinal(t, id) // the upgrade
		events.expect(t, EventDownloadDone, EventInstalled, EventReported)
	})
	t.Run("never answer", func(t *testing.T) {
		b := newBroker(t, true)
		handled, hook := handledCh()
		const id = "dev-ev-mute"
		events := newEventLog()
		cfg := Config{DeviceID: id, FwVersion: "1.0", OnEvent: events.onEvent, Behaviour: Behaviour{NeverAnswer: true}}
		cfg.handled = hook
		startDevice(t, b, cfg)
		b.publish(t, id, iotda.EncodeUpgrade(id, false, iotda.UpgradeParas{Version: "2.0"}, t0))
		waitHandled(t, handled, iotda.EventFirmwareUpgrade)
		events.expect(t, EventCommand)
		events.none(t)
	})
}
