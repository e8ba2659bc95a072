package mqtt_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
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

func BenchmarkMQTTUpgrades(b *testing.B) {
	var upgrades, messagesSeen, sent, handled int64
	var elapsed, cpu time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s := newStack(b, 1<<10)
		s.devices("b", benchDevices, nil)
		b.StartTimer()
		rc := clock.Real()
		startCPU, start := cpuTime(), rc.Now()
		s.createTask("bench", ids("b", benchDevices), nil)
		waitFor(b, "the task", 120*time.Second, func() bool { return finished(s.task("bench").Status) })
		elapsed += rc.Since(start)
		cpu += cpuTime() - startCPU
		b.StopTimer()
		if v := s.task("bench"); v.Progress.Success != benchDevices {
			b.Fatalf("task: %+v", v.Progress)
		}
		var devSent int64
		for _, d := range s.sims {
			st := d.Stats()
			devSent += int64(st.VersionReports + st.ProgressReports)
		}
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
	b.ReportMetric(float64(cpu.Microseconds())/float64(upgrades), "cpu-µs/upgrade")
	b.ReportMetric(perUpgrade, "msgs/upgrade")
	b.ReportMetric(relay/perUpgrade, "relay-upgrades/s")
	b.ReportMetric(upRate/(relay/perUpgrade), "ratio")
	b.ReportMetric(float64(sent-handled), "reports-lost")
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
