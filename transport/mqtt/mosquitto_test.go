package mqtt_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/otafleet/otafleet/bench/sim/mqttsim"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/mqtt"
	"github.com/otafleet/otafleet/transport/mqtt/iotda"
)

// mosquittoConf is the broker configuration the README asks for: QoS 1
// messages for a disconnected persistent session are never dropped
// (max_queued_messages 0 lifts the default limit of 1000).
const mosquittoConf = `listener %d 127.0.0.1
allow_anonymous true
max_queued_messages 0
persistence false
`

// startMosquitto runs a real Mosquitto broker for the test and returns its
// URL. CI installs mosquitto (.ci/run); elsewhere set
// OTAFLEET_SKIP_MOSQUITTO=1 to skip these tests.
func startMosquitto(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/mosquitto"); serr == nil {
			bin = "/usr/sbin/mosquitto"
		}
	}
	if bin == "" {
		if os.Getenv("OTAFLEET_SKIP_MOSQUITTO") == "1" {
			t.Skip("mosquitto is not installed and OTAFLEET_SKIP_MOSQUITTO=1")
		}
		t.Fatal("mosquitto is not installed: apt-get install mosquitto (.ci/run does), or set OTAFLEET_SKIP_MOSQUITTO=1")
	}
	// Mosquitto cannot listen on port 0: take a free port and hand it over.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(mosquittoConf, port)), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, "-c", conf)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitFor(t, "mosquitto on "+addr, 10*time.Second, func() bool {
		select {
		case <-exited:
			t.Fatalf("mosquitto exited: %s", out.String())
		default:
		}
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return "tcp://" + addr
}

// TestExternalMosquitto: the same firmware task, and a resumed download,
// with devices on a real Mosquitto broker. The adapter probes the awaited
// devices (it cannot see them connect) and they answer.
func TestExternalMosquitto(t *testing.T) {
	url := startMosquitto(t)
	s := newStackOn(t, 96<<10, url)
	const n = 20
	devs := s.devices("e", n, func(i int) mqttsim.Behaviour {
		if i == 0 {
			return mqttsim.Behaviour{DropAfterBytes: 40 << 10, ReconnectDelay: 20 * time.Millisecond}
		}
		return mqttsim.Behaviour{}
	})
	s.createTask("t1", ids("e", n), nil)
	// e0 drops mid-download; its reconnect delay runs on the fake clock,
	// which moves in small steps until it has resumed (no deadline of the
	// engine comes near).
	waitFor(t, "e0 to resume", 30*time.Second, func() bool {
		if devs[0].Stats().Resumes > 0 {
			return true
		}
		s.clk.Advance(20 * time.Millisecond)
		return false
	})
	v := s.waitTask("t1")
	if v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS || v.Progress.Success != n {
		t.Fatalf("task ended %v %+v: %v", v.Status, v.Progress, outcomes(v))
	}
	for i, d := range devs {
		if fw, _ := d.Versions(); fw != "2.0" {
			t.Fatalf("device %d: fw %s, %+v", i, fw, d.Stats())
		}
	}
	if st := devs[0].Stats(); st.Resumes != 1 {
		t.Fatalf("e0 did not resume: %+v", st)
	}
}

// uplinkLog records delivered inputs.
type uplinkLog struct {
	mu  sync.Mutex
	got []string
}

func (u *uplinkLog) Deliver(_ context.Context, id string, in *messages.DeviceInput) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.got = append(u.got, id+" "+strings.Join(strings.Fields(in.String()), " "))
	return nil
}

func (u *uplinkLog) has(sub string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, g := range u.got {
		if strings.Contains(g, sub) {
			return true
		}
	}
	return false
}

// TestExternalKeepsReportsWhileAway: reports published while otafleet is
// disconnected wait in the broker's persistent session and arrive when it
// is back.
func TestExternalKeepsReportsWhileAway(t *testing.T) {
	url := startMosquitto(t)
	ctx := context.Background()
	connect := func(log *uplinkLog) *mqtt.External {
		e, err := mqtt.NewExternal(ctx, mqtt.ExternalConfig{Broker: url, ClientID: "otafleet-keep", Uplinks: log, Downloads: mint{}})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	first := &uplinkLog{}
	e := connect(first)
	dev, err := mqttsim.Start(ctx, mqttsim.Config{Broker: url, Subscribe: true, DeviceID: "k1", Secret: "s", FwVersion: "1.0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dev.Stop)
	if err := dev.ReportVersion(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first report", 10*time.Second, func() bool { return first.has(`fw_version:"1.0"`) })
	e.Close()

	// While otafleet is away the device reports 50 times.
	for i := range 50 {
		p := i
		payload := iotda.EncodeProgress("k1", iotda.Progress{Progress: &p, Version: fmt.Sprintf("away-%d", i)}, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
		if err := publishRaw(url, "k1-raw", iotda.UpTopic("k1"), payload); err != nil {
			t.Fatal(err)
		}
	}
	second := &uplinkLog{}
	e = connect(second)
	defer e.Close()
	waitFor(t, "the reports sent while away", 20*time.Second, func() bool { return second.has(`"away-49"`) })
	for i := range 50 {
		if !second.has(fmt.Sprintf(`"away-%d"`, i)) {
			t.Fatalf("report away-%d was lost", i)
		}
	}
}

// publishRaw publishes one QoS 1 message as a plain client.
func publishRaw(url, clientID, topic string, payload []byte) error {
	c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID(clientID).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return fmt.Errorf("connect: %v", tok.Error())
	}
	defer c.Disconnect(0)
	tok := c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return fmt.Errorf("publish: %v", tok.Error())
	}
	return nil
}

// mosquittoTool finds a mosquitto-clients program (Debian
// mosquitto-clients, which .ci/run installs).
func mosquittoTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("OTAFLEET_SKIP_MOSQUITTO") == "1" {
			t.Skipf("%s is not installed and OTAFLEET_SKIP_MOSQUITTO=1", name)
		}
		t.Fatalf("%s is not installed: apt-get install mosquitto-clients (.ci/run does), or set OTAFLEET_SKIP_MOSQUITTO=1", name)
	}
	return p
}

// TestMosquittoClientsAsDevice: mosquitto_pub and mosquitto_sub play a
// device against the embedded broker, as the README shows.
func TestMosquittoClientsAsDevice(t *testing.T) {
	pub, sub := mosquittoTool(t, "mosquitto_pub"), mosquittoTool(t, "mosquitto_sub")
	s := newStack(t, 4<<10)
	ctx := context.Background()
	if err := s.store.CreateDevices(ctx, []persistence.Device{{ID: "meter-1", ProductID: "meter", Secret: "s3cret"}}); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(s.broker.Addr("mqtt"))
	c := iotda.NewClientID("meter-1", s.clk.Now())
	dev := []string{"-h", host, "-p", port, "-u", "meter-1", "-P", iotda.Password("s3cret", c.Timestamp), "-k", "120"}

	// Listen as the device (sign type 0) for one downlink.
	var subOut bytes.Buffer
	subCmd := exec.Command(sub, append(dev, "-i", "meter-1_0_0_"+c.Timestamp, "-t", iotda.DownTopic("meter-1"), "-C", "1", "-W", "20")...)
	subCmd.Stdout, subCmd.Stderr = &subOut, &subOut
	if err := subCmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "mosquitto_sub online", 10*time.Second, func() bool {
		d, err := s.eng.Device(ctx, "meter-1")
		return err == nil && d.State.Online
	})
	// Report the version as the device (sign type 1).
	out, err := exec.Command(pub, append(dev, "-i", c.String(), "-q", "1", "-t", iotda.UpTopic("meter-1"),
		"-m", `{"services":[{"service_id":"$ota","event_type":"version_report","paras":{"fw_version":"1.0"}}]}`)...).CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, out)
	}
	waitFor(t, "the reported version", 10*time.Second, func() bool {
		d, err := s.eng.Device(ctx, "meter-1")
		return err == nil && d.State.FwVersion == "1.0"
	})
	// A task asks the listening device for its version.
	s.createTask("t1", []string{"meter-1"}, nil)
	if err := subCmd.Wait(); err != nil {
		t.Fatalf("mosquitto_sub: %v: %s", err, subOut.String())
	}
	if d, ok, err := iotda.DecodeDownlink(bytes.TrimSpace(subOut.Bytes())); err != nil || !ok || d.EventType != iotda.EventVersionQuery {
		t.Fatalf("mosquitto_sub got %q (%v)", subOut.String(), err)
	}
	// A wrong password is refused.
	bad := append([]string{}, dev...)
	bad[7] = strings.Repeat("0", 64)
	if out, err := exec.Command(pub, append(bad, "-i", c.String(), "-t", iotda.UpTopic("meter-1"), "-m", "{}")...).CombinedOutput(); err == nil {
		t.Fatalf("a wrong password was accepted: %s", out)
	}
}

// refusingLog records delivered inputs and refuses the reports that contain
// refuse, as an engine that cannot journal them does.
type refusingLog struct {
	uplinkLog
	refuse string
}

func (r *refusingLog) Deliver(ctx context.Context, id string, in *messages.DeviceInput) error {
	_ = r.uplinkLog.Deliver(ctx, id, in)
	if strings.Contains(in.String(), r.refuse) {
		return errors.New("actors: journal write failed")
	}
	return nil
}

// TestExternalAcksOnlyJournaled (issue 18 item 10): on an external broker, a
// report the engine could not journal is not acknowledged, so the broker
// delivers it again when the adapter's session comes back. Before the fix
// paho acknowledged it after the handler returned, and it was gone.
func TestExternalAcksOnlyJournaled(t *testing.T) {
	url := startMosquitto(t)
	ctx := context.Background()
	connect := func(up transport.Uplinks) *mqtt.External {
		e, err := mqtt.NewExternal(ctx, mqtt.ExternalConfig{Broker: url, ClientID: "otafleet-ack", Uplinks: up, Downloads: mint{}})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	report := func(v string) []byte {
		return iotda.EncodeVersionReport("a1", &v, nil, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	}
	first := &refusingLog{refuse: "refused-1"}
	e := connect(first)
	if err := publishRaw(url, "a1-raw", iotda.UpTopic("a1"), report("refused-1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the refused report", 10*time.Second, func() bool { return first.has(`"refused-1"`) })
	e.Close()

	second := &uplinkLog{}
	e = connect(second)
	defer e.Close()
	if err := publishRaw(url, "a1-raw", iotda.UpTopic("a1"), report("after-1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the report after reconnecting", 10*time.Second, func() bool { return second.has(`"after-1"`) })
	if !second.has(`"refused-1"`) {
		t.Fatal("the report the engine could not journal was acknowledged and is lost")
	}
}

// TestExternalServiceCap (issue 18 item 7): the adapter to an external
// broker refuses an uplink of more than iotda.MaxServices services whole,
// as the embedded broker does.
func TestExternalServiceCap(t *testing.T) {
	url := startMosquitto(t)
	log := &uplinkLog{}
	e, err := mqtt.NewExternal(context.Background(), mqtt.ExternalConfig{Broker: url, ClientID: "otafleet-cap", Uplinks: log, Downloads: mint{}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	flood, after := "flood", "after"
	one := string(iotda.EncodeVersionReport("c1", &flood, nil, at))
	svc := one[strings.Index(one, "[")+1 : strings.LastIndex(one, "]")]
	payload := []byte(`{"services":[` + strings.TrimSuffix(strings.Repeat(svc+",", iotda.MaxServices+1), ",") + `]}`)
	if err := publishRaw(url, "c1-raw", iotda.UpTopic("c1"), payload); err != nil {
		t.Fatal(err)
	}
	if err := publishRaw(url, "c1-raw", iotda.UpTopic("c1"), iotda.EncodeVersionReport("c1", &after, nil, at)); err != nil {
		t.Fatal(err)
	}
	// The adapter takes messages in order: once the second is in, the
	// first was handled.
	waitFor(t, "the report after the flood", 10*time.Second, func() bool { return log.has(`fw_version:"after"`) })
	if log.has(`"flood"`) {
		t.Fatal("an uplink of too many services reached the engine")
	}
}
