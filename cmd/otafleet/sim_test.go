package main

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/bench"
	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

// TestSimRegisterProducts follows the README from the tour to the sim
// section: the tour's MQTT devices are sim-0, sim-1, ...; `otafleet sim
// --register` of an LwM2M product with its default prefix makes devices of
// its own, and with the tour's prefix it stops with an error naming the
// device and both products, moving nothing. Registering devices that exist
// in their own product again is fine.
func TestSimRegisterProducts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	e := startE2E(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	product := func(name string, p v1.Protocol) string {
		r, err := e.products.CreateProduct(ctx, connect.NewRequest(&v1.CreateProductRequest{Name: name, Protocol: p}))
		if err != nil {
			t.Fatal(err)
		}
		return r.Msg.GetProduct().GetProductId()
	}
	meters, lw := product("meters", v1.Protocol_PROTOCOL_MQTT), product("meter", v1.Protocol_PROTOCOL_LWM2M)
	secret := "s3cret-meter"
	if _, err := e.devices.CreateDevices(ctx, connect.NewRequest(&v1.CreateDevicesRequest{ProductId: meters,
		Devices: []*v1.NewDevice{{DeviceId: "sim-0", Secret: &secret}, {DeviceId: "sim-1", Secret: &secret}}})); err != nil {
		t.Fatal(err)
	}
	productOf := func(id string) string {
		r, err := e.devices.GetDevice(ctx, connect.NewRequest(&v1.GetDeviceRequest{DeviceId: id}))
		if err != nil {
			t.Fatalf("device %s: %v", id, err)
		}
		return r.Msg.GetDevice().GetProductId()
	}

	_, errOut, code := e.cli("sim", "--register", "--protocol", "lwm2m", "--product", lw, "--devices", "2", "--id-prefix", "sim-")
	if want := "device sim-0 is in product " + meters + ", not " + lw; code != 1 || !strings.Contains(errOut, want) {
		t.Fatalf("sim --register over the tour's devices: exit %d, stderr %q; want exit 1 and %q", code, errOut, want)
	}
	if productOf("sim-0") != meters || productOf("sim-1") != meters {
		t.Fatal("a refused registration moved a device")
	}

	// The default prefix: the fleet comes up in its own product.
	sim := exec.Command(os.Args[0], "sim", "--register", "--protocol", "lwm2m", "--product", lw, "--devices", "2", "--data-dir", e.dir)
	sim.Env = append(os.Environ(), "OTAFLEET_TEST_MAIN=1", envToken+"=", envAPI+"=")
	stdout, err := sim.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	sim.Stderr = &stderr
	if err := sim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Process.Kill() })
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "ready devices=2 ") {
				ready <- true
			}
		}
		close(ready)
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("sim exited before ready: %v\n%s", sim.Wait(), stderr.String())
		}
	case <-ctx.Done():
		t.Fatalf("sim not ready:\n%s", stderr.String())
	}
	for _, id := range []string{simIDPrefix + "0", simIDPrefix + "1"} {
		if got := productOf(id); got != lw {
			t.Fatalf("%s is in product %s, want %s", id, got, lw)
		}
	}
	if err := sim.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := sim.Wait(); err != nil {
		t.Fatalf("sim after SIGINT: %v\n%s", err, stderr.String())
	}

	// Again in the same product: kept, nothing created.
	f := bench.Fleet{Protocols: []string{bench.ProtoLwM2M}, Devices: 2, Prefix: simIDPrefix, Cells: 1, Coverage: bench.CoverageGood, SecretSeed: "otafleet-sim"}
	n, err := bench.Register(ctx, bench.NewAPI(e.api, e.token), f, map[string]string{bench.ProtoLwM2M: lw}, false)
	if err != nil || n != 0 {
		t.Fatalf("registering devices of the same product again: %d created, %v", n, err)
	}
	f.Prefix = "sim-"
	if _, err := bench.Register(ctx, bench.NewAPI(e.api, e.token), f, map[string]string{bench.ProtoLwM2M: lw}, false); !errors.Is(err, bench.ErrOtherProduct) {
		t.Fatalf("Register over another product's devices: %v, want ErrOtherProduct", err)
	}
}

// TestSimDefaultLocalAddrs: against a loopback server a sim's devices bind
// to 127.0.0.1 (never the wildcard, whose UDP ports must be free on every
// address), and to one more loopback address per 16,000 devices; against
// another server the system chooses.
func TestSimDefaultLocalAddrs(t *testing.T) {
	for _, c := range []struct {
		mqtt, coap, proto string
		devices           int
		want              []string
	}{
		{"", "127.0.0.1:5683", bench.ProtoLwM2M, 10, []string{"127.0.0.1"}},
		{"tcp://127.0.0.1:1883,tcp://127.0.0.1:1884", "127.0.0.1:5683", bench.ProtoMQTT, 300, []string{"127.0.0.1"}},
		{"", "127.0.0.1:5683,127.0.0.1:5684", bench.ProtoPCP, 16001, []string{"127.0.0.1", "127.0.0.2"}},
		{"", "10.0.0.5:5683", bench.ProtoLwM2M, 10, nil},
		{"tcp://broker.example:1883", "127.0.0.1:5683", bench.ProtoMQTT, 10, nil},
	} {
		if got := defaultLocalAddrs(c.mqtt, c.coap, c.proto, c.devices); !slices.Equal(got, c.want) {
			t.Errorf("defaultLocalAddrs(%q, %q, %s, %d) = %v, want %v", c.mqtt, c.coap, c.proto, c.devices, got, c.want)
		}
	}
}
