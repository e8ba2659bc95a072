package mqtt_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/otafleet/otafleet/bench/sim/mqttsim"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/transport"
)

// The MQTT benchmark runs, in one process, otafleet (engine, embedded
// broker, download server over TLS) and simulated devices (paho) on
// loopback: upgrades of a small package per second, next to the broker
// alone (mochi, no hooks) relaying the same number of messages between paho
// clients. The ratio is the figure; the devices' paho clients cost more CPU
// than the broker, so the process CPU per upgrade is an upper bound of
// otafleet's.
//
//	go test ./transport/mqtt -run '^$' -bench MQTT -benchtime 3x

const benchDevices = 500

// countingUplinks counts the reports the engine is handed.
type countingUplinks struct {
	next    transport.Uplinks
	reports atomic.Int64
}

func (c *countingUplinks) Deliver(ctx context.Context, id string, in *messages.DeviceInput) error {
	switch in.GetKind().(type) {
	case *messages.DeviceInput_VersionReported, *messages.DeviceInput_MqttProgress:
		c.reports.Add(1)
	}
	return c.next.Deliver(ctx, id, in)
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// The devices run in a child process (this test binary, re-executed), so
// that otafleet's CPU (this process) and the devices' (the child's) are
// measured apart.
const fleetEnv = "OTAFLEET_BENCH_FLEET" // broker URL,device count,cert dir,epoch unix seconds

func TestMain(m *testing.M) {
	if spec := os.Getenv(fleetEnv); spec != "" {
		os.Exit(runFleet(spec))
	}
	os.Exit(m.Run())
}

// runFleet is the child: it starts the devices b0..b(n-1) (secret-i), says
// "ready", and when its stdin closes stops them and prints the reports they
// sent.
func runFleet(spec string) int {
	var addr, certDir string
	var n int
	var epoch int64
	parts := strings.Split(spec, ",")
	if len(parts) != 4 {
		fmt.Fprintln(os.Stderr, "fleet: bad spec", spec)
		return 2
	}
	addr, certDir = parts[0], parts[2]
	n, _ = strconv.Atoi(parts[1])
	epoch, _ = strconv.ParseInt(parts[3], 10, 64)
	pemBytes, err := os.ReadFile(filepath.Join(certDir, "download-cert.pem"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		return 1
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	tc := &tls.Config{RootCAs: pool} // the broker's MQTTS listener has the download server's certificate
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tc, MaxIdleConnsPerHost: 64}}
	clk := clocktest.New(time.Unix(epoch, 0)) // the broker's clock: client ID timestamps agree
	devs := make([]*mqttsim.Device, n)
	var wg sync.WaitGroup
	var failed atomic.Bool
	starting := make(chan struct{}, 64) // a bounded storm: TLS handshakes on a loaded machine
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			starting <- struct{}{}
			defer func() { <-starting }()
			d, err := mqttsim.Start(context.Background(), mqttsim.Config{Broker: addr, DeviceID: fmt.Sprintf("b%d", i),
				Secret: fmt.Sprintf("secret-%d", i), FwVersion: "1.0", HTTPClient: client, TLSConfig: tc, Clock: clk})
			if err != nil {
				fmt.Fprintln(os.Stderr, "fleet:", err)
				failed.Store(true)
				return
			}
			devs[i] = d
		}()
	}
	wg.Wait()
	if failed.Load() {
		return 1
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	var sent int64
	for _, d := range devs {
		st := d.Stats()
		sent += int64(st.VersionReports + st.ProgressReports)
		d.Stop()
	}
	fmt.Println(sent)
	return 0
}

func BenchmarkMQTTUpgrades(b *testing.B) {
	var upgrades, messagesSeen, sent, handled int64
	var elapsed, cpu, fleetCPU time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s := newStack(b, 1<<10)
		var regs []persistence.Device
		for j := range benchDevices {
			regs = append(regs, persistence.Device{ID: fmt.Sprintf("b%d", j), ProductID: "meter", Secret: fmt.Sprintf("secret-%d", j)})
		}
		if err := s.store.CreateDevices(context.Background(), regs); err != nil {
			b.Fatal(err)
		}
		fleet := startFleet(b, s, "tcp://"+s.broker.Addr("mqtt"), benchDevices)
		waitFor(b, "the devices online", 60*time.Second, func() bool {
			d, err := s.eng.Device(context.Background(), fmt.Sprintf("b%d", benchDevices-1))
			return err == nil && d.State.Online
		})
		b.StartTimer()
		rc := clock.Real()
		startCPU, start := cpuTime(), rc.Now()
		s.createTask("bench", ids("b", benchDevices), nil)
		waitFor(b, "the task", 120*time.Second, func() bool { return s.task("bench").Status.Final() })
		elapsed += rc.Since(start)
		cpu += cpuTime() - startCPU
		b.StopTimer()
		if v := s.task("bench"); v.Progress.Success != benchDevices {
			b.Fatalf("task: %+v", v.Progress)
		}
		devSent, devCPU := fleet.stop()
		fleetCPU += devCPU
		upgrades += benchDevices
		sent += devSent
		handled += s.counter.reports.Load()
		messagesSeen += devSent + s.late.sent.Load() // device publishes and platform downlinks
		b.StartTimer()
	}
	b.StopTimer()
	if sent != handled {
		b.Fatalf("devices sent %d reports, the engine handled %d", sent, handled)
	}
	upRate := float64(upgrades) / elapsed.Seconds()
	perUpgrade := float64(messagesSeen) / float64(upgrades)
	relay := relayRate(b, int(messagesSeen/int64(b.N)))
	b.ReportMetric(upRate, "upgrades/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(upgrades), "otafleet-cpu-µs/upgrade")
	b.ReportMetric(float64(fleetCPU.Microseconds())/float64(upgrades), "devices-cpu-µs/upgrade")
	b.ReportMetric(perUpgrade, "msgs/upgrade")
	b.ReportMetric(relay/perUpgrade, "relay-upgrades/s")
	b.ReportMetric(upRate/(relay/perUpgrade), "ratio")
	b.ReportMetric(float64(sent-handled), "reports-lost")
}

// fleet is a child process running simulated devices (runFleet).
type fleet struct {
	b         *testing.B
	cmd       *exec.Cmd
	stdin     io.Closer
	out       *bufio.Scanner
	cpuBefore time.Duration
}

// startFleet starts n devices b0..b(n-1) in a child process against s's
// broker at url (tcp:// or ssl://) and returns once they are all connected.
func startFleet(b *testing.B, s *stack, url string, n int) *fleet {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d,%s,%d", fleetEnv, url, n, s.certDir, s.clk.Now().Unix()))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	f := &fleet{b: b, cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout), cpuBefore: childCPU()}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	if !f.out.Scan() || f.out.Text() != "ready" {
		b.Fatalf("the device fleet did not start: %q", f.out.Text())
	}
	return f
}

// stop stops the devices and returns the reports they sent and the CPU
// time the fleet used.
func (f *fleet) stop() (sent int64, cpu time.Duration) {
	f.b.Helper()
	f.stdin.Close()
	if !f.out.Scan() {
		f.b.Fatal("the device fleet did not report")
	}
	sent, _ = strconv.ParseInt(f.out.Text(), 10, 64)
	if err := f.cmd.Wait(); err != nil {
		f.b.Fatal(err)
	}
	return sent, childCPU() - f.cpuBefore
}

// BenchmarkMQTTIdle measures what a connected, idle device costs the
// process that runs the engine and the embedded broker: heap, goroutine
// stacks, goroutines and RSS per device (after a garbage collection), with
// idleDevices devices in a child process, over plain MQTT (tcp) and MQTTS
// (tls). With OTAFLEET_IDLE_HEAP_PROFILE set to a file name, it writes the
// heap profile of the idle fleet there (go tool pprof
// -sample_index=inuse_space).
//
//	go test ./transport/mqtt -run '^$' -bench MQTTIdle -benchtime 1x
func BenchmarkMQTTIdle(b *testing.B) {
	b.Run("tcp", func(b *testing.B) { benchmarkIdle(b, "tcp", "mqtt") })
	b.Run("tls", func(b *testing.B) { benchmarkIdle(b, "ssl", "mqtts") })
}

func benchmarkIdle(b *testing.B, scheme, listener string) {
	const idleDevices = 2000
	var heap, stacks, goroutines, rss float64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s := newStack(b, 1<<10)
		var regs []persistence.Device
		for j := range idleDevices {
			regs = append(regs, persistence.Device{ID: fmt.Sprintf("b%d", j), ProductID: "meter", Secret: fmt.Sprintf("secret-%d", j)})
		}
		if err := s.store.CreateDevices(context.Background(), regs); err != nil {
			b.Fatal(err)
		}
		before := idleMemory()
		f := startFleet(b, s, scheme+"://"+s.broker.Addr(listener), idleDevices)
		waitFor(b, "the devices online", 60*time.Second, func() bool {
			d, err := s.eng.Device(context.Background(), fmt.Sprintf("b%d", idleDevices-1))
			return err == nil && d.State.Online
		})
		after := idleMemory()
		heap += float64(after.heap-before.heap) / idleDevices
		stacks += float64(after.stacks-before.stacks) / idleDevices
		goroutines += float64(after.goroutines-before.goroutines) / idleDevices
		rss += float64(after.rss-before.rss) / idleDevices
		if name := os.Getenv("OTAFLEET_IDLE_HEAP_PROFILE"); name != "" {
			if err := writeHeapProfile(name); err != nil {
				b.Fatal(err)
			}
		}
		f.stop()
	}
	b.ReportMetric(heap/float64(b.N), "heap-B/device")
	b.ReportMetric(stacks/float64(b.N), "stack-B/device")
	b.ReportMetric(goroutines/float64(b.N), "goroutines/device")
	b.ReportMetric(rss/float64(b.N), "rss-B/device")
}

type memFigures struct{ heap, stacks, goroutines, rss int64 }

// idleMemory is the live heap after a garbage collection, the goroutine
// stacks, the number of goroutines and the resident set (0 where /proc is
// missing).
func idleMemory() memFigures {
	runtime.GC()
	ms := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/stacks:bytes"},
		{Name: "/sched/goroutines:goroutines"}}
	metrics.Read(ms)
	return memFigures{int64(ms[0].Value.Uint64()), int64(ms[1].Value.Uint64()), int64(ms[2].Value.Uint64()), residentBytes()}
}

// residentBytes is this process's VmRSS from /proc/self/status; 0 if unknown.
func residentBytes() int64 {
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(st)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// writeHeapProfile writes the heap profile (after a collection) to name.
func writeHeapProfile(name string) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// childCPU is the CPU time of the waited-for child processes so far.
func childCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// relayRate measures the broker alone: QoS 1 messages per second from
// benchDevices paho publishers to one paho subscriber, for total messages.
func relayRate(b *testing.B, total int) float64 {
	srv := mochi.New(&mochi.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	_ = srv.AddHook(new(auth.AllowHook), nil)
	l := listeners.NewTCP(listeners.Config{ID: "relay", Address: "127.0.0.1:0"})
	if err := srv.AddListener(l); err != nil {
		b.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	url := "tcp://" + l.Address()
	var got atomic.Int64
	done := make(chan struct{})
	sub := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("relay-sub").SetOrderMatters(false))
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	defer sub.Disconnect(0)
	if tok := sub.Subscribe("relay/#", 1, func(paho.Client, paho.Message) {
		if got.Add(1) == int64(total) {
			close(done)
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	pubs := make([]paho.Client, benchDevices)
	for i := range pubs {
		pubs[i] = paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("relay-pub-%d", i)))
		if tok := pubs[i].Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			b.Fatal(tok.Error())
		}
		defer pubs[i].Disconnect(0)
	}
	payload := bytes.Repeat([]byte("x"), 160) // about an $ota event
	rc := clock.Real()
	start := rc.Now()
	var wg sync.WaitGroup
	for i, p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := i; j < total; j += len(pubs) {
				p.Publish(fmt.Sprintf("relay/%d", i), 1, false, payload).Wait()
			}
		}()
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	select {
	case <-done:
	case <-ctx.Done():
		b.Fatalf("relayed %d of %d", got.Load(), total)
	}
	return float64(total) / rc.Since(start).Seconds()
}
