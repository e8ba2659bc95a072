package mqtt_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/actors/device/devicefsm"
	"github.com/otafleet/otafleet/bench/sim/mqttsim"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/download"
	"github.com/otafleet/otafleet/transport/mqtt"
	"github.com/otafleet/otafleet/transport/mqtt/iotda"
)

// The integration tests run the real broker, the real download server over
// TLS and the real engine on loopback sockets, with simulated IoTDA devices
// (paho). The engine's deadlines run on a fake clock: the happy paths never
// wait for one, and the timeout paths advance it.

// lateDownlinks lets the engine exist before the broker that needs it; it
// counts the downlinks sent.
type lateDownlinks struct {
	transport.LateDownlinks
	sent atomic.Int64
}

func (l *lateDownlinks) Send(ctx context.Context, dl *messages.Downlink) error {
	l.sent.Add(1)
	return l.LateDownlinks.Send(ctx, dl)
}

type mint struct {
	s    *download.Server
	base string
}

func (m mint) Mint(taskID, deviceID string, attempt uint32, packageID string) (string, string, time.Time) {
	tok, exp := m.s.Mint(download.Grant{TaskID: taskID, DeviceID: deviceID, Attempt: attempt, PackageID: packageID})
	return m.base + download.Path(packageID), tok, exp
}

// stack is one otafleet: registry, engine, download server, broker.
type stack struct {
	t       testing.TB
	clk     *clocktest.Clock
	store   *memstore.Store
	eng     *actors.Engine
	broker  *mqtt.Broker // embedded mode
	ext     string       // external mode: the broker's URL
	dl      *download.Server
	dlURL   string
	client  *http.Client
	pkg     persistence.Package // firmware 2.0 from 1.0
	swPkg   persistence.Package // software app-2 from app-1
	content []byte
	late    *lateDownlinks
	certDir string           // download-cert.pem of the download server
	counter *countingUplinks // what the transports hand the engine
	sims    []*mqttsim.Device

	mu       sync.Mutex
	requests []string // Range headers the download server saw
}

func newStack(t testing.TB, packageSize int) *stack { return newStackOn(t, packageSize, "") }

// newStackOn is newStack with an external broker at brokerURL ("" for the
// embedded one).
func newStackOn(t testing.TB, packageSize int, brokerURL string) *stack {
	t.Helper()
	ctx := context.Background()
	s := &stack{t: t, clk: clocktest.New(time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)), store: memstore.New()}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.store.PutProduct(ctx, persistence.Product{ID: "meter", Name: "meter", Protocol: persistence.ProtocolMQTT}))
	s.content = make([]byte, packageSize)
	_, _ = rand.Read(s.content)
	size, sum, err := s.store.WriteBlob(ctx, "fw-2.0", bytes.NewReader(s.content), int64(packageSize))
	must(err)
	s.pkg = persistence.Package{ID: "fw-2.0", ProductID: "meter", Type: persistence.PackageFirmware, Version: "2.0",
		SourceVersions: []string{"1.0"}, FileName: "meter-2.0.bin", Size: size, SHA256: sum}
	must(s.store.PutPackage(ctx, s.pkg))
	size, sum, err = s.store.WriteBlob(ctx, "app-2", bytes.NewReader(s.content[:packageSize/2]), int64(packageSize))
	must(err)
	s.swPkg = persistence.Package{ID: "app-2", ProductID: "meter", Type: persistence.PackageSoftware, Version: "app-2",
		SourceVersions: []string{"app-1"}, FileName: "app-2.tar", Size: size, SHA256: sum}
	must(s.store.PutPackage(ctx, s.swPkg))

	late := &lateDownlinks{}
	s.late = late
	s.eng, err = actors.New(actors.Config{}, actors.Deps{Store: s.store, Clock: s.clk, Transport: late})
	must(err)
	must(s.eng.Start(ctx))
	t.Cleanup(s.eng.Stop)
	s.counter = &countingUplinks{next: s.eng}

	key := make([]byte, 32)
	_, _ = rand.Read(key)
	dl, err := download.New(download.Config{
		Packages: s.store, Key: key, Clock: s.clk,
		Authorize: s.eng.AuthorizeDownload, OnServed: s.eng.DownloadServed,
	})
	must(err)
	s.dl = dl
	s.certDir = t.TempDir()
	cert, err := download.LoadOrCreateCert(s.certDir, nil)
	must(err)
	h := dl.Handler()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests = append(s.requests, r.Header.Get("Range"))
		s.mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	s.dlURL = srv.URL
	pool := x509.NewCertPool()
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	must(err)
	pool.AddCert(leaf)
	s.client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}

	if brokerURL != "" {
		s.ext = brokerURL
		ext, err := mqtt.NewExternal(ctx, mqtt.ExternalConfig{Broker: brokerURL, ClientID: "otafleet-" + t.Name(), Uplinks: s.counter,
			Downloads: mint{s: dl, base: srv.URL}, Clock: s.clk})
		must(err)
		t.Cleanup(func() { ext.Close() })
		late.Set(ext)
		return s
	}
	s.broker, err = mqtt.NewBroker(mqtt.BrokerConfig{Addr: "127.0.0.1:0", Credentials: s.store, Uplinks: s.counter,
		TLSAddr: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{cert}},
		Downloads: mint{s: dl, base: srv.URL}, Clock: s.clk})
	must(err)
	must(s.broker.Start())
	t.Cleanup(func() { s.broker.Close() })
	late.Set(s.broker)
	return s
}

// devices registers n devices prefix0..prefix(n-1) and starts a simulated
// device for each with behaviour b(i).
func (s *stack) devices(prefix string, n int, b func(i int) mqttsim.Behaviour) []*mqttsim.Device {
	s.t.Helper()
	ctx := context.Background()
	var regs []persistence.Device
	for i := range n {
		regs = append(regs, persistence.Device{ID: fmt.Sprintf("%s%d", prefix, i), ProductID: "meter", Secret: fmt.Sprintf("secret-%d", i)})
	}
	if err := s.store.CreateDevices(ctx, regs); err != nil {
		s.t.Fatal(err)
	}
	devs := make([]*mqttsim.Device, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var beh mqttsim.Behaviour
			if b != nil {
				beh = b(i)
			}
			broker, subscribe := s.ext, true // devices on an external broker subscribe themselves
			if broker == "" {
				broker, subscribe = "tcp://"+s.broker.Addr("mqtt"), false
			}
			d, err := mqttsim.Start(ctx, mqttsim.Config{
				Broker: broker, Subscribe: subscribe, DeviceID: regs[i].ID, Secret: regs[i].Secret,
				FwVersion: "1.0", SwVersion: "app-1", HTTPClient: s.client, Behaviour: beh, Clock: s.clk,
			})
			if err != nil {
				errs <- fmt.Errorf("%s: %w", regs[i].ID, err)
				return
			}
			devs[i] = d
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() {
		for _, d := range devs {
			d.Stop()
		}
	})
	s.sims = append(s.sims, devs...)
	return devs
}

func (s *stack) createTask(id string, deviceIDs []string, policy *messages.Policy) {
	s.t.Helper()
	s.createTaskOf(id, s.pkg, deviceIDs, policy)
}

func (s *stack) createTaskOf(id string, p persistence.Package, deviceIDs []string, policy *messages.Policy) {
	s.t.Helper()
	tt := messages.TaskType_TASK_TYPE_FIRMWARE_UPGRADE
	if p.Type == persistence.PackageSoftware {
		tt = messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE
	}
	err := s.eng.CreateTask(context.Background(), &messages.CreateTask{
		TaskId: id, Name: id, TaskType: tt, Protocol: messages.Protocol_PROTOCOL_MQTT,
		Package: &messages.Package{PackageId: p.ID, Version: p.Version, SourceVersions: p.SourceVersions, Size: p.Size,
			FileName: p.FileName, Sha256: hex.EncodeToString(p.SHA256[:])},
		DeviceIds: deviceIDs, Policy: policy,
	})
	if err != nil {
		s.t.Fatal(err)
	}
}

// waitFor polls cond (real time, every 10 ms, at most limit): the devices
// act on their own goroutines.
func waitFor(t testing.TB, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for !cond() {
		tm := clock.Real().NewTimer(10 * time.Millisecond)
		select {
		case <-ctx.Done():
			tm.Stop()
			t.Fatalf("timed out waiting for %s", what)
		case <-tm.C():
		}
	}
}

func (s *stack) task(id string) actors.TaskView {
	s.t.Helper()
	v, err := s.eng.TaskDevices(context.Background(), id, 0, 1000, 0)
	if err != nil {
		s.t.Fatal(err)
	}
	return v
}

func (s *stack) waitTask(id string) actors.TaskView {
	s.t.Helper()
	waitFor(s.t, "task "+id, 60*time.Second, func() bool { return s.task(id).Status.Final() })
	return s.task(id)
}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

// outcomes is "device: STATUS reason" per sub-task, sorted by device.
func outcomes(v actors.TaskView) map[string]string {
	out := map[string]string{}
	for _, st := range v.Subtasks {
		s := strings.TrimPrefix(st.Status.String(), "SUBTASK_STATUS_")
		if r := messages.ReasonText(st.Reason); r != "" {
			s += ": " + r
		}
		out[st.DeviceID] = s
	}
	return out
}

// TestFirmwareAndSoftwareTasksOverMQTT: 500 devices upgrade their firmware,
// then their software, downloading and verifying each package.
func TestFirmwareAndSoftwareTasksOverMQTT(t *testing.T) {
	const n = 500
	s := newStack(t, 64<<10)
	devs := s.devices("m", n, nil)
	s.createTask("t1", ids("m", n), nil)
	v := s.waitTask("t1")
	if v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS || v.Progress.Success != n {
		t.Fatalf("task ended %v %+v: %v", v.Status, v.Progress, outcomes(v))
	}
	for i, d := range devs {
		fw, _ := d.Versions()
		st := d.Stats()
		if fw != "2.0" || st.Downloads != 1 || st.BytesDownloaded != int64(len(s.content)) || st.Upgrades != 1 {
			t.Fatalf("device %d: fw %s, %+v", i, fw, st)
		}
	}
	// Every sub-task knows the version it upgraded from.
	for _, st := range v.Subtasks {
		if st.SourceVersion != "1.0" {
			t.Fatalf("%s: source version %q", st.DeviceID, st.SourceVersion)
		}
	}

	s.createTaskOf("t2", s.swPkg, ids("m", n), nil)
	v = s.waitTask("t2")
	if v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS || v.Progress.Success != n {
		t.Fatalf("software task ended %v %+v: %v", v.Status, v.Progress, outcomes(v))
	}
	for i, d := range devs {
		fw, sw := d.Versions()
		if fw != "2.0" || sw != "app-2" || d.Stats().Upgrades != 2 {
			t.Fatalf("device %d: fw %s sw %s, %+v", i, fw, sw, d.Stats())
		}
	}
}

func TestResumeAfterDrop(t *testing.T) {
	s := newStack(t, 200<<10)
	devs := s.devices("r", 1, func(int) mqttsim.Behaviour {
		return mqttsim.Behaviour{DropAfterBytes: 70 << 10, ReconnectDelay: 20 * time.Millisecond}
	})
	s.createTask("t1", []string{"r0"}, nil)
	// The device drops mid-download; its reconnect delay runs on the fake
	// clock, which moves in small steps until it has resumed (no deadline
	// of the engine comes near).
	waitFor(t, "r0 to resume", 30*time.Second, func() bool {
		if devs[0].Stats().Resumes > 0 {
			return true
		}
		s.clk.Advance(20 * time.Millisecond)
		return false
	})
	v := s.waitTask("t1")
	if v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS {
		t.Fatalf("task %v: %v", v.Status, outcomes(v))
	}
	if st := devs[0].Stats(); st.Resumes != 1 || st.Upgrades != 1 {
		t.Fatalf("device stats %+v", st)
	}
	s.mu.Lock()
	reqs := append([]string(nil), s.requests...)
	s.mu.Unlock()
	resumed := false
	for _, r := range reqs {
		if strings.HasPrefix(r, "bytes=") && r != "bytes=0-" {
			resumed = true
		}
	}
	if !resumed {
		t.Fatalf("no Range request resumed the download: %q", reqs)
	}
}

// TestDeviceFailures: every MQTT result code of spec 2.6 ends its device
// with its exact reason, and so does a package that fails the device's
// SHA-256 check.
func TestDeviceFailures(t *testing.T) {
	s := newStack(t, 16<<10)
	codes := []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255}
	behaviours := []mqttsim.Behaviour{{CorruptDownload: true}, {FailWith: 10, FailAfterDownload: true}}
	for _, c := range codes {
		behaviours = append(behaviours, mqttsim.Behaviour{FailWith: c})
	}
	s.devices("f", len(behaviours), func(i int) mqttsim.Behaviour { return behaviours[i] })
	s.createTask("t1", ids("f", len(behaviours)), nil)
	v := s.waitTask("t1")
	got := outcomes(v)
	reason := func(code int) string { return "FAIL: " + messages.ReasonText(devicefsm.DeviceCodeReason(int32(code))) }
	want := map[string]string{"f0": reason(7), "f1": reason(10)}
	for i, c := range codes {
		want[fmt.Sprintf("f%d", i+2)] = reason(c)
	}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("%s (%+v): %q, want %q", id, behaviours[atoi(id[1:])], got[id], w)
		}
	}
	for _, st := range v.Subtasks {
		if st.ResultCode == 0 {
			t.Errorf("%s: no result code kept", st.DeviceID)
		}
	}
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

func TestTimeouts(t *testing.T) {
	s := newStack(t, 4<<10)
	// s0 never answers; s1 is registered but never connects.
	s.devices("s", 1, func(int) mqttsim.Behaviour { return mqttsim.Behaviour{NeverAnswer: true} })
	if err := s.store.CreateDevices(context.Background(), []persistence.Device{{ID: "offline", ProductID: "meter", Secret: "x"}}); err != nil {
		t.Fatal(err)
	}
	s.createTask("t1", []string{"s0", "offline"}, nil)
	// The version query went out to s0; then 26 hours pass.
	waitFor(t, "s0 in VERSION_QUERY", 30*time.Second, func() bool {
		d, err := s.eng.Device(context.Background(), "s0")
		return err == nil && d.State.Stage == messages.Stage_STAGE_VERSION_QUERY
	})
	for range 26 * 60 {
		s.eng.Settle()
		s.clk.Advance(time.Minute)
	}
	v := s.waitTask("t1")
	got := outcomes(v)
	if w := "FAIL: " + messages.ReasonText(messages.Reason_REASON_VERSION_REPORT_TIMEOUT); got["s0"] != w {
		t.Errorf("s0: %q, want %q", got["s0"], w)
	}
	if w := "FAIL: " + messages.ReasonText(messages.Reason_REASON_ONLINE_TIMEOUT); got["offline"] != w {
		t.Errorf("offline: %q, want %q", got["offline"], w)
	}
}

func TestStoppedTaskRevokesDownload(t *testing.T) {
	s := newStack(t, 4<<10)
	s.devices("x", 1, func(int) mqttsim.Behaviour { return mqttsim.Behaviour{NeverAnswer: true} })
	// Mint the token the device would get, then stop the task: the token
	// is refused from then on.
	s.createTask("t1", []string{"x0"}, nil)
	waitFor(t, "x0 job", 30*time.Second, func() bool {
		d, err := s.eng.Device(context.Background(), "x0")
		return err == nil && d.State.Job != nil
	})
	req := func() int {
		url, tok, _ := mint{s: s.dl, base: s.dlURL}.Mint("t1", "x0", 1, s.pkg.ID)
		r, _ := http.NewRequest("GET", url, nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		resp, err := s.client.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := req(); code != http.StatusOK {
		t.Fatalf("token of the running job: %d", code)
	}
	if err := s.eng.StopTask(context.Background(), "t1"); err != nil {
		t.Fatal(err)
	}
	s.eng.Settle()
	if code := req(); code != http.StatusForbidden {
		t.Fatalf("token of a stopped job: %d, want 403", code)
	}
}

// rawDevice is a device played with a plain paho client: it answers
// version_query with fw 1.0 and calls onUpgrade for an upgrade event.
func (s *stack) rawDevice(id string, onUpgrade func(c paho.Client, p *iotda.UpgradeParas)) {
	s.t.Helper()
	if err := s.store.CreateDevices(context.Background(), []persistence.Device{{ID: id, ProductID: "meter", Secret: "raw"}}); err != nil {
		s.t.Fatal(err)
	}
	c := iotda.NewClientID(id, s.clk.Now())
	o := paho.NewClientOptions().AddBroker("tcp://" + s.broker.Addr("mqtt")).SetClientID(c.String()).SetUsername(id).
		SetPassword(iotda.Password("raw", c.Timestamp)).SetKeepAlive(60 * time.Second).SetAutoReconnect(false)
	o.SetDefaultPublishHandler(func(cl paho.Client, m paho.Message) {
		d, ok, err := iotda.DecodeDownlink(m.Payload())
		if err != nil || !ok {
			return
		}
		switch d.EventType {
		case iotda.EventVersionQuery:
			fw := "1.0"
			cl.Publish(iotda.UpTopic(id), 1, false, iotda.EncodeVersionReport(id, &fw, nil, s.clk.Now()))
		case iotda.EventFirmwareUpgrade:
			onUpgrade(cl, d.Upgrade)
		}
	})
	cl := paho.NewClient(o)
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		s.t.Fatal(tok.Error())
	}
	s.t.Cleanup(func() { cl.Disconnect(0) })
}

// TestVersionPaths: the version decisions and the result timeout of spec
// 2.10 end with their exact reasons.
func TestVersionPaths(t *testing.T) {
	s := newStack(t, 4<<10)
	ctx := context.Background()
	for id, fw := range map[string]string{"same": "2.0", "old": "0.9"} {
		if err := s.store.CreateDevices(ctx, []persistence.Device{{ID: id, ProductID: "meter", Secret: "x"}}); err != nil {
			t.Fatal(err)
		}
		d, err := mqttsim.Start(ctx, mqttsim.Config{Broker: "tcp://" + s.broker.Addr("mqtt"), DeviceID: id, Secret: "x",
			FwVersion: fw, HTTPClient: s.client, Clock: s.clk})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Stop)
	}
	notified := make(chan struct{}, 1)
	s.rawDevice("silent", func(paho.Client, *iotda.UpgradeParas) { notified <- struct{}{} })
	s.rawDevice("liar", func(c paho.Client, p *iotda.UpgradeParas) {
		pr := 100
		c.Publish(iotda.UpTopic("liar"), 1, false, iotda.EncodeProgress("liar", iotda.Progress{Progress: &pr, Version: "1.5"}, s.clk.Now()))
	})
	s.createTask("t1", []string{"same", "old", "silent", "liar"}, nil)
	ctxw, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	select {
	case <-notified:
	case <-ctxw.Done():
		t.Fatal("the silent device got no upgrade event")
	}
	waitFor(t, "three outcomes", 30*time.Second, func() bool {
		p := s.task("t1").Progress
		return p.Success+p.Fail == 3
	})
	// 25 hours pass: the silent device's result never comes.
	for range 25 * 60 {
		s.eng.Settle()
		s.clk.Advance(time.Minute)
	}
	got := outcomes(s.waitTask("t1"))
	want := map[string]string{
		"same":   "SUCCESS: " + messages.ReasonText(messages.Reason_REASON_SAME_VERSION),
		"old":    "FAIL: " + messages.ReasonText(messages.Reason_REASON_SOURCE_VERSION_NOT_ALLOWED),
		"silent": "FAIL: " + messages.ReasonText(messages.Reason_REASON_RESULT_TIMEOUT),
		"liar":   "FAIL: " + messages.ReasonText(messages.Reason_REASON_VERSION_MISMATCH),
	}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("%s: %q, want %q", id, got[id], w)
		}
	}
}
