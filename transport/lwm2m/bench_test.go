package lwm2m_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	coapnet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
	"github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/otafleet/otafleet/bench/sim/lwm2msim"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/memstore"
	"github.com/otafleet/otafleet/transport/download"
	"github.com/otafleet/otafleet/transport/lwm2m"
)

// The LwM2M benchmarks run, in one process, the LwM2M server and simulated
// devices on loopback, next to a bare go-coap GET server measured in the
// same run: the ratios are the figures.
//
//	go test ./transport/lwm2m -run '^$' -bench . -benchtime 3x

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rawGetRate is the bare go-coap baseline: GETs per second of a fixed
// 1024-byte payload from clients (one socket each) to a server that
// answers them and does nothing else.
func rawGetRate(b *testing.B, clients, total int) float64 {
	payload := bytes.Repeat([]byte("x"), 1024)
	router := mux.NewRouter()
	router.DefaultHandleFunc(func(w mux.ResponseWriter, r *mux.Message) {
		_ = w.SetResponse(codes.Content, message.AppOctets, bytes.NewReader(payload))
	})
	lis, err := coapnet.NewListenUDP("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := udp.NewServer(options.WithMux(router), options.WithBlockwise(false, blockwise.SZX1024, time.Minute))
	go func() { _ = srv.Serve(lis) }()
	defer func() { srv.Stop(); lis.Close() }()
	conns := make([]*client.Conn, clients)
	for i := range conns {
		c, err := udp.Dial(lis.LocalAddr().String(), options.WithBlockwise(false, blockwise.SZX1024, time.Minute))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	rc := clock.Real()
	start := rc.Now()
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := i; j < total; j += clients {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				res, err := c.Get(ctx, "/fw/x")
				cancel()
				if err != nil || res.Code() != codes.Content {
					b.Errorf("raw GET: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return float64(total) / rc.Since(start).Seconds()
}

// nopUplinks drops every input (the Block2 benchmark has no engine).
type nopUplinks struct{}

func (nopUplinks) Deliver(context.Context, string, *messages.DeviceInput) error { return nil }

// BenchmarkBlock2 measures the package served block-wise: 1024-byte blocks
// per second to 10, 100 and 500 clients at once (one socket each, so the
// server's per-peer cost shows as the ratio between them), each fetching a
// whole 64 KiB package a block at a time, beside the bare go-coap GET
// server; and the bytes the process allocates per block served.
func BenchmarkBlock2(b *testing.B) {
	for _, clients := range []int{10, 100, 500} {
		b.Run(fmt.Sprintf("peers=%d", clients), func(b *testing.B) { benchBlock2(b, clients) })
	}
}

func benchBlock2(b *testing.B, clients int) {
	const size = 64 << 10
	ctx := context.Background()
	st := memstore.New()
	content := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	n, sum, err := st.WriteBlob(ctx, "big", bytes.NewReader(content), size)
	if err != nil {
		b.Fatal(err)
	}
	if err := st.PutProduct(ctx, persistence.Product{ID: "p", Name: "p", Protocol: persistence.ProtocolLWM2M}); err != nil {
		b.Fatal(err)
	}
	if err := st.PutPackage(ctx, persistence.Package{ID: "big", ProductID: "p", Type: persistence.PackageFirmware, Version: "2", Size: n, SHA256: sum}); err != nil {
		b.Fatal(err)
	}
	dl, err := download.New(download.Config{Packages: st, Handles: st, Key: bytes.Repeat([]byte{3}, 32)})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := lwm2m.New(lwm2m.Config{Addr: "127.0.0.1:0", Devices: st, Packages: st, Tokens: dl, Uplinks: nopUplinks{}})
	if err != nil {
		b.Fatal(err)
	}
	srv.Start()
	defer srv.Close()
	conns := make([]*client.Conn, clients)
	tokens := make([]string, clients)
	for i := range conns {
		c, err := udp.Dial(srv.Addr(), options.WithBlockwise(false, blockwise.SZX1024, time.Minute))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
		tokens[i], _ = dl.Mint(download.Grant{TaskID: "t", DeviceID: fmt.Sprintf("d%d", i), Attempt: 1, PackageID: "big"})
	}
	blocks := size / 1024
	var total int
	var elapsed time.Duration
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	rc := clock.Real()
	for range b.N {
		start := rc.Now()
		var wg sync.WaitGroup
		for i, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for num := range blocks {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					req, _ := c.NewGetRequest(ctx, "/fw/big")
					req.AddOptionString(message.URIQuery, "t="+tokens[i])
					req.SetOptionUint32(message.Block2, uint32(num)<<4|6)
					res, err := c.Do(req)
					cancel()
					if err != nil || res.Code() != codes.Content {
						b.Errorf("block %d: %v", num, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		elapsed += rc.Since(start)
		total += clients * blocks
	}
	runtime.ReadMemStats(&ms1)
	b.StopTimer()
	rate := float64(total) / elapsed.Seconds()
	raw := rawGetRate(b, clients, total/b.N)
	b.ReportMetric(rate, "blocks/s")
	b.ReportMetric(raw, "raw-gets/s")
	b.ReportMetric(rate/raw, "ratio")
	b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/float64(total), "alloc-B/block")
}

// The FOTA benchmark's devices run in a child process (this test binary,
// re-executed), so that otafleet's CPU (this process) and the devices' (the
// child's) are measured apart.
const fleetEnv = "OTAFLEET_BENCH_LWM2M_FLEET" // server address,prefix,count

func TestMain(m *testing.M) {
	if spec := os.Getenv(fleetEnv); spec != "" {
		os.Exit(runFleet(spec))
	}
	if spec := os.Getenv(pcpFleetEnv); spec != "" {
		os.Exit(runPCPFleet(spec))
	}
	pgtest.Main(m) // the node-held sessions' test runs on PostgreSQL
}

// runFleet is the child: devices prefix0..prefix(n-1) in good coverage over
// 10 cells; "ready" once registered; stopped when stdin closes.
func runFleet(spec string) int {
	devs, code := startFleet("fleet", spec, func(c *lwm2msim.Config) {
		c.NewVersion = func(string) string { return "2.0" }
	})
	if devs == nil {
		return code
	}
	for _, d := range devs {
		d.Stop()
	}
	return 0
}

// startFleet starts the devices of a child's spec ("addr,prefix,n"):
// prefix0..prefix(n-1), firmware 1.0, good coverage over 10 cells, each
// Config adjusted by tune; it prints "ready" once all are registered and
// returns them when stdin closes (nil and the exit code on failure; what
// names the child in its errors).
func startFleet(what, spec string, tune func(*lwm2msim.Config)) ([]*lwm2msim.Device, int) {
	parts := strings.Split(spec, ",")
	if len(parts) != 3 {
		fmt.Fprintln(os.Stderr, what+": bad spec", spec)
		return nil, 2
	}
	addr, prefix := parts[0], parts[1]
	n, _ := strconv.Atoi(parts[2])
	devs := make([]*lwm2msim.Device, n)
	var wg sync.WaitGroup
	var failed atomic.Bool
	for i := range n {
		wg.Go(func() {
			rsrp, sinr := coverage(0)
			cfg := lwm2msim.Config{Server: addr, Endpoint: fmt.Sprintf("%s%d", prefix, i),
				FwVersion: "1.0", RSRP: rsrp, SINR: sinr, CellID: int64(1000 + i%10)}
			tune(&cfg)
			d, err := lwm2msim.Start(context.Background(), cfg)
			if err != nil {
				fmt.Fprintln(os.Stderr, what+":", err)
				failed.Store(true)
				return
			}
			devs[i] = d
		})
	}
	wg.Wait()
	if failed.Load() {
		for _, d := range devs {
			if d != nil {
				d.Stop()
			}
		}
		return nil, 1
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return devs, 0
}

func childCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFOTAUpgrades measures FOTA upgrades of a 1 KiB package (one
// block) by 500 devices in 10 cells of good coverage, beside the bare
// go-coap server doing as many CoAP exchanges from as many sockets; the
// CPU of otafleet and of the devices apart.
func BenchmarkFOTAUpgrades(b *testing.B) {
	const n = 500
	var upgrades, exchanges uint64
	var elapsed, cpu, fleetCPU time.Duration
	for i := range b.N {
		b.StopTimer()
		s := newStack(b)
		prefix := fmt.Sprintf("b%d-", i)
		var regs []persistence.Device
		for j := range n {
			regs = append(regs, persistence.Device{ID: fmt.Sprintf("%s%d", prefix, j), ProductID: "meter"})
		}
		if err := s.store.CreateDevices(context.Background(), regs); err != nil {
			b.Fatal(err)
		}
		small := s.fw
		small.ID = "small"
		content := bytes.Repeat([]byte("firmware"), 128)
		size, sum, err := s.store.WriteBlob(context.Background(), small.ID, bytes.NewReader(content), 1024)
		if err != nil {
			b.Fatal(err)
		}
		small.Size, small.SHA256 = size, sum
		if err := s.store.PutPackage(context.Background(), small); err != nil {
			b.Fatal(err)
		}
		fleet := exec.Command(os.Args[0], "-test.run=^$")
		fleet.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%s,%d", fleetEnv, s.srv.Addr(), prefix, n))
		stdin, _ := fleet.StdinPipe()
		stdout, _ := fleet.StdoutPipe()
		fleet.Stderr = os.Stderr
		child0 := childCPU()
		if err := fleet.Start(); err != nil {
			b.Fatal(err)
		}
		out := bufio.NewScanner(stdout)
		if !out.Scan() || out.Text() != "ready" {
			b.Fatalf("the device fleet did not start: %q", out.Text())
		}
		ex0 := s.srv.Exchanges()
		b.StartTimer()
		rc := clock.Real()
		start, cpu0 := rc.Now(), cpuTime()
		s.createTask("bench", small, ids(prefix, n))
		v := s.waitTask("bench")
		elapsed += rc.Since(start)
		cpu += cpuTime() - cpu0
		b.StopTimer()
		if v.Progress.Success != n {
			b.Fatalf("task: %+v %v", v.Progress, outcomes(v))
		}
		upgrades += n
		exchanges += s.srv.Exchanges() - ex0
		stdin.Close()
		if err := fleet.Wait(); err != nil {
			b.Fatal(err)
		}
		fleetCPU += childCPU() - child0
	}
	perUpgrade := float64(exchanges) / float64(upgrades)
	rate := float64(upgrades) / elapsed.Seconds()
	raw := rawGetRate(b, n, int(exchanges)/b.N)
	b.ReportMetric(rate, "upgrades/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(upgrades), "otafleet-cpu-µs/upgrade")
	b.ReportMetric(float64(fleetCPU.Microseconds())/float64(upgrades), "devices-cpu-µs/upgrade")
	b.ReportMetric(perUpgrade, "exchanges/upgrade")
	b.ReportMetric(raw/perUpgrade, "raw-upgrades/s")
	b.ReportMetric(rate/(raw/perUpgrade), "ratio")
}

// BenchmarkConcurrentDownloads measures the memory a download in progress
// costs: 768 clients (one socket each) each fetch the first 25 or 100
// blocks of a 200 KiB package and stop; the heap then, after a GC, less the
// heap after each client's first exchange (go-coap's per-peer state), per
// download. go-coap keeps every response to a confirmable request for
// EXCHANGE_LIFETIME (247 s) to answer retransmissions, and its UDP server
// offers no option to change that cache: the figure grows with the blocks
// fetched within that time, while otafleet's own state is one map entry.
func BenchmarkConcurrentDownloads(b *testing.B) {
	for _, blocks := range []int{25, 100} {
		b.Run(fmt.Sprintf("blocks=%d", blocks), func(b *testing.B) { benchConcurrentDownloads(b, blocks) })
	}
}

func benchConcurrentDownloads(b *testing.B, blocksEach int) {
	const clients, size = 768, 200 << 10
	ctx := context.Background()
	st := memstore.New()
	content := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	n, sum, err := st.WriteBlob(ctx, "big", bytes.NewReader(content), size)
	if err != nil {
		b.Fatal(err)
	}
	if err := st.PutProduct(ctx, persistence.Product{ID: "p", Name: "p", Protocol: persistence.ProtocolLWM2M}); err != nil {
		b.Fatal(err)
	}
	if err := st.PutPackage(ctx, persistence.Package{ID: "big", ProductID: "p", Type: persistence.PackageFirmware, Version: "2", Size: n, SHA256: sum}); err != nil {
		b.Fatal(err)
	}
	dl, err := download.New(download.Config{Packages: st, Handles: st, Key: bytes.Repeat([]byte{3}, 32)})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := lwm2m.New(lwm2m.Config{Addr: "127.0.0.1:0", Devices: st, Packages: st, Tokens: dl, Uplinks: nopUplinks{}})
	if err != nil {
		b.Fatal(err)
	}
	srv.Start()
	defer srv.Close()
	conns := make([]*client.Conn, clients)
	tokens := make([]string, clients)
	get := func(i, num int) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		req, _ := conns[i].NewGetRequest(ctx, "/fw/big")
		req.AddOptionString(message.URIQuery, "t="+tokens[i])
		req.SetOptionUint32(message.Block2, uint32(num)<<4|6)
		if res, err := conns[i].Do(req); err != nil || res.Code() != codes.Content {
			b.Errorf("client %d block %d: %v", i, num, err)
		}
	}
	for i := range conns {
		c, err := udp.Dial(srv.Addr(), options.WithBlockwise(false, blockwise.SZX1024, time.Minute))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
		tokens[i], _ = dl.Mint(download.Grant{TaskID: "t", DeviceID: fmt.Sprintf("d%d", i), Attempt: 1, PackageID: "big"})
	}
	parallel := func(f func(i int)) {
		var wg sync.WaitGroup
		for i := range conns {
			wg.Add(1)
			go func() { defer wg.Done(); f(i) }()
		}
		wg.Wait()
	}
	heap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	var perDownload float64
	for range b.N {
		// A first exchange each: go-coap's per-peer state exists.
		parallel(func(i int) { get(i, 150) })
		before := heap()
		parallel(func(i int) {
			for num := range blocksEach {
				get(i, num)
			}
		})
		after := heap()
		perDownload = (float64(after) - float64(before)) / clients
	}
	b.ReportMetric(perDownload, "heap-B/download")
}
