package lwm2m_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/mux"
	coapnet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
	"github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/bench/sim/lwm2msim"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/internal/gctune"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pebblestore"
	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/download"
	"github.com/otafleet/otafleet/transport/lwm2m"
	"github.com/otafleet/otafleet/transport/pcp"
)

// BenchmarkPCPUpgrades is PCP's yardstick (issue 21): software upgrades
// over PCP (spec 4) of pcpDevices simulated devices (lwm2msim, in a child
// process, good coverage in 10 cells), first through otafleet as serve
// runs it (the engine on a Pebble store on disk, the LwM2M server, package
// images, the real clock), then, in the same run, the same exchanges on a
// bare go-coap v3 UDP server that drives them with nothing but PCP's codec
// (barePCP). Each side's figure is this process's CPU per upgrade from the
// start of the upgrades to their end (the devices registered before), as
// `otafleet bench` reports engine_cpu_ms_per_upgrade; the goal is
// otafleet-cpu ≤ bare-cpu + 250 µs at any package size, here 1 KiB (3
// segments: the engine's cost per upgrade shows), 16 KiB (bench's default)
// and 128 KiB (the cost per segment shows).
//
// The exchanges of one upgrade, as the server makes them (a capture of a
// real run, 16 KiB in 500-byte segments: 33):
//
//	server → device                       device → server (CON notifications of /19/0/0)
//	GET /19/0/0 Observe 0 → 2.05
//	PUT /19/1/0 0x13 → 2.04               0x13 version → ACK
//	GET /4/0 → 2.05 (radio)
//	PUT /19/1/0 0x14 → 2.04               0x14 response → ACK
//	PUT /19/1/0 0x15 segment N → 2.04     0x15 request N → ACK          (each segment)
//	PUT /19/1/0 0x16 ack → 2.04           0x16 download result → ACK
//	PUT /19/1/0 0x17 → 2.04               0x17 response → ACK
//	PUT /19/1/0 0x18 ack → 2.04           0x18 upgrade result → ACK
//
// so 7 + segments requests from the server and 5 + segments notifications
// from the device; the metrics say how many each side counted
// (exchanges/upgrade: requests and notifications) and how many
// notifications the devices sent (notifications/upgrade).
//
// otafleet's side has the garbage collector's heap floor that serve keeps
// while devices have jobs (--gc-heap-floor, internal/gctune); the bare side
// runs at GOGC 100, as the library runs by default, unless -bare-gc-floor
// gives it the same floor while its upgrades run.
//
//	go test ./transport/lwm2m -run '^$' -bench PCPUpgrades -benchtime 1x
func BenchmarkPCPUpgrades(b *testing.B) {
	for _, size := range []int{1 << 10, 16 << 10, 128 << 10} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) { benchPCPUpgrades(b, size) })
	}
}

// bareGCFloor gives the bare side of BenchmarkPCPUpgrades the heap floor
// otafleet's side has.
var bareGCFloor = flag.Bool("bare-gc-floor", false, "BenchmarkPCPUpgrades: the bare go-coap side gets otafleet's garbage collector heap floor (gctune.DefaultFloor) while its upgrades run")

// pcpDevices is the fleet of BenchmarkPCPUpgrades.
const pcpDevices = 500

// pcpFleetEnv makes the test binary a PCP device fleet (runPCPFleet):
// server address,device ID prefix,count.
const pcpFleetEnv = "OTAFLEET_BENCH_PCP_FLEET"

// runPCPFleet is the child of BenchmarkPCPUpgrades: PCP devices
// prefix0..prefix(n-1) (software V1.0) in good coverage over 10 cells;
// "ready" once registered; when stdin closes, it stops them and prints the
// notifications they sent, the versions they installed and the segments
// they stored.
func runPCPFleet(spec string) int {
	devs, code := startFleet("pcp fleet", spec, func(c *lwm2msim.Config) {
		c.SwVersion, c.ObjectsPCP = "V1.0", true
	})
	if devs == nil {
		return code
	}
	var notifications, upgrades, segments int
	for _, d := range devs {
		st := d.Stats()
		notifications += st.Notifications
		upgrades += st.Upgrades
		segments += st.SegmentsFetched
		d.Stop()
	}
	fmt.Println(notifications, upgrades, segments)
	return 0
}

// pcpFleet is a running child of runPCPFleet.
type pcpFleet struct {
	b         *testing.B
	cmd       *exec.Cmd
	stdin     io.Closer
	out       *bufio.Scanner
	cpuBefore time.Duration
}

// startPCPFleet starts n PCP devices prefix0.. against the server at addr
// and returns once they are all registered.
func startPCPFleet(b *testing.B, addr, prefix string, n int) *pcpFleet {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%s,%d", pcpFleetEnv, addr, prefix, n))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	f := &pcpFleet{b: b, cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout), cpuBefore: childCPU()}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	if !f.out.Scan() || f.out.Text() != "ready" {
		b.Fatalf("the PCP fleet did not start: %q", f.out.Text())
	}
	return f
}

// pcpFleetStats is what a fleet's devices did.
type pcpFleetStats struct {
	notifications, upgrades, segments int
	cpu                               time.Duration
	failed                            int // upgrades the server saw fail
}

// stop stops the devices and returns what they did.
func (f *pcpFleet) stop() pcpFleetStats {
	f.b.Helper()
	f.stdin.Close()
	if !f.out.Scan() {
		f.b.Fatal("the PCP fleet did not report")
	}
	var st pcpFleetStats
	if _, err := fmt.Sscan(f.out.Text(), &st.notifications, &st.upgrades, &st.segments); err != nil {
		f.b.Fatalf("the PCP fleet's report %q: %v", f.out.Text(), err)
	}
	if err := f.cmd.Wait(); err != nil {
		f.b.Fatal(err)
	}
	st.cpu = childCPU() - f.cpuBefore
	return st
}

// pcpSide is one side's totals over the iterations.
type pcpSide struct {
	cpu, elapsed, devicesCPU time.Duration
	upgrades                 int
	exchanges                uint64 // CoAP exchanges the server counted
	notifications            int    // notifications the devices sent
	failed                   int
}

func (s *pcpSide) add(cpu, elapsed time.Duration, exchanges uint64, st pcpFleetStats) {
	s.cpu += cpu
	s.elapsed += elapsed
	s.devicesCPU += st.cpu
	s.upgrades += st.upgrades
	s.exchanges += exchanges
	s.notifications += st.notifications
	s.failed += st.failed
}

func benchPCPUpgrades(b *testing.B, size int) {
	content := make([]byte, size)
	for i := range content {
		content[i] = byte(i * 7)
	}
	var ota, bare pcpSide
	for i := range b.N {
		b.StopTimer()
		ota.add(otafleetPCPRun(b, fmt.Sprintf("o%d-", i), content))
		bare.add(barePCPRun(b, fmt.Sprintf("r%d-", i), content))
		b.StartTimer()
	}
	b.StopTimer()
	per := func(d time.Duration, n int) float64 { return float64(d.Microseconds()) / float64(n) }
	b.ReportMetric(per(ota.cpu, ota.upgrades), "otafleet-cpu-µs/upgrade")
	b.ReportMetric(per(bare.cpu, bare.upgrades), "bare-cpu-µs/upgrade")
	b.ReportMetric(per(ota.cpu, ota.upgrades)-per(bare.cpu, bare.upgrades), "over-bare-µs/upgrade")
	b.ReportMetric(float64(ota.upgrades)/ota.elapsed.Seconds(), "upgrades/s")
	b.ReportMetric(float64(bare.upgrades)/bare.elapsed.Seconds(), "bare-upgrades/s")
	b.ReportMetric(per(ota.devicesCPU, ota.upgrades), "devices-cpu-µs/upgrade")
	b.ReportMetric(float64(ota.exchanges)/float64(ota.upgrades), "exchanges/upgrade")
	b.ReportMetric(float64(bare.exchanges)/float64(bare.upgrades), "bare-exchanges/upgrade")
	b.ReportMetric(float64(ota.notifications)/float64(ota.upgrades), "notifications/upgrade")
	b.ReportMetric(float64(bare.notifications)/float64(bare.upgrades), "bare-notifications/upgrade")
	b.ReportMetric(float64(bare.failed), "bare-failed")
}

// otafleetPCPRun upgrades pcpDevices devices (IDs prefix0..) to content
// through otafleet wired as serve wires it, and returns this process's CPU
// and the time from the task's creation to its end, the CoAP exchanges
// the LwM2M server counted meanwhile and what the devices did.
func otafleetPCPRun(b *testing.B, prefix string, content []byte) (time.Duration, time.Duration, uint64, pcpFleetStats) {
	b.Helper()
	ctx := context.Background()
	must := func(err error) {
		b.Helper()
		if err != nil {
			b.Fatal(err)
		}
	}
	store, err := pebblestore.Open(b.TempDir(), pebblestore.Options{Logger: slog.New(slog.DiscardHandler)})
	must(err)
	defer store.Close()
	must(store.PutProduct(ctx, persistence.Product{ID: "meter", Name: "meter", Protocol: persistence.ProtocolLWM2M, SoftwarePCP: true}))
	var regs []persistence.Device
	for j := range pcpDevices {
		regs = append(regs, persistence.Device{ID: fmt.Sprintf("%s%d", prefix, j), ProductID: "meter"})
	}
	must(store.CreateDevices(ctx, regs))
	n, sum, err := store.WriteBlob(ctx, "app-2", bytes.NewReader(content), int64(len(content)))
	must(err)
	pkg := persistence.Package{ID: "app-2", ProductID: "meter", Type: persistence.PackageSoftware, Version: "V2.0",
		SourceVersions: []string{"V1.0"}, FileName: "app-2.bin", Size: n, SHA256: sum}
	must(store.PutPackage(ctx, pkg))

	clk := clock.Real()
	late := &transport.LateDownlinks{}
	eng, err := actors.New(actors.Config{}, actors.Deps{Store: store, Clock: clk, Transport: late})
	must(err)
	defer eng.Stop()
	images := download.NewImages(store, 256<<20)
	dl, err := download.New(download.Config{Packages: store, Handles: store, Key: bytes.Repeat([]byte{9}, 32), Clock: clk,
		Authorize: eng.AuthorizeDownload, KeepGrants: true, OnServed: eng.DownloadServed, Images: images})
	must(err)
	srv, err := lwm2m.New(lwm2m.Config{Addr: "127.0.0.1:0", Devices: store, Packages: store, Tokens: dl, Images: images,
		Sessions: store, Uplinks: eng, Clock: clk})
	must(err)
	defer srv.Close()
	late.Set(revoking{Downlinks: srv, dl: dl})
	must(eng.Start(ctx))
	srv.Start()
	// As serve: the collector's heap floor while devices have jobs.
	defer gctune.Start(100, gctune.While(gctune.DefaultFloor, func() bool { return eng.ActiveJobs() > 0 })).Stop()

	fleet := startPCPFleet(b, srv.Addr(), prefix, pcpDevices)
	eng.Settle()
	ex0 := srv.Exchanges()
	start, cpu0 := clk.Now(), cpuTime()
	must(eng.CreateTask(ctx, &messages.CreateTask{
		TaskId: "pcp", Name: "pcp", TaskType: messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE, Protocol: messages.Protocol_PROTOCOL_LWM2M_PCP,
		DeviceIds: ids(prefix, pcpDevices),
		Package: &messages.Package{PackageId: pkg.ID, Version: pkg.Version, SourceVersions: pkg.SourceVersions, Size: pkg.Size,
			FileName: pkg.FileName, Sha256: hex.EncodeToString(pkg.SHA256[:]), SegmentSize: 500, CheckCode: uint32(pcp.CheckCode(pkg.SHA256))},
	}))
	var v actors.TaskView
	waitFor(b, "the PCP task", 10*time.Minute, func() bool {
		v, err = eng.Task(ctx, "pcp")
		return err == nil && v.Status.Final()
	})
	cpu, elapsed := cpuTime()-cpu0, clk.Since(start)
	exchanges := srv.Exchanges() - ex0
	if v.Progress.Success != pcpDevices {
		b.Fatalf("PCP task: %+v", v.Progress)
	}
	st := fleet.stop()
	if st.upgrades != pcpDevices {
		b.Fatalf("%d of %d devices upgraded", st.upgrades, pcpDevices)
	}
	return cpu, elapsed, exchanges, st
}

// barePCP is the yardstick's server: go-coap v3's UDP server doing PCP's
// exchanges with each registered device and nothing else (no engine, no
// journal, no registry): it answers registrations, and an upgrade is a
// goroutine per device that observes /19/0/0, writes PCP frames to /19/1/0
// (encoded by transport/pcp, segments sliced from the package in memory)
// and reads /4/0, in the order otafleet does.
type barePCP struct {
	pkg     []byte
	version string
	check   uint16
	// exchanges counts them as lwm2m.Server.Exchanges does: requests
	// either way and notifications.
	exchanges atomic.Uint64

	mu    sync.Mutex
	conns []mux.Conn // the registered devices' connections
}

const bareSegmentSize = 500

// bareRequestTimeout bounds a request of the bare server: go-coap gives up
// retransmitting a confirmable request after about 45 s but waits for its
// context. A device whose request fails has its upgrade counted failed
// (bare-failed): the bare server has no deadlines and retries, which
// otafleet's engine adds.
const bareRequestTimeout = time.Minute

// handle answers a registration (POST /rd) with 2.01 and a location, and
// a registration update with 2.04.
func (p *barePCP) handle(w mux.ResponseWriter, r *mux.Message) {
	path, _ := r.Options().Path()
	p.exchanges.Add(1)
	if r.Code() != codes.POST || !strings.HasPrefix(path, "/rd") {
		_ = w.SetResponse(codes.NotFound, message.TextPlain, nil)
		return
	}
	if path != "/rd" {
		_ = w.SetResponse(codes.Changed, message.TextPlain, nil)
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, w.Conn())
	id := strconv.Itoa(len(p.conns))
	p.mu.Unlock()
	_ = w.SetResponse(codes.Created, message.TextPlain, nil,
		message.Option{ID: message.LocationPath, Value: []byte("rd")}, message.Option{ID: message.LocationPath, Value: []byte(id)})
}

// upgrade runs one device's upgrade to the end (its 0x18 acknowledged).
func (p *barePCP) upgrade(ctx context.Context, cc mux.Conn) error {
	frames := make(chan []byte, 8)
	p.exchanges.Add(1)
	octx, cancel := context.WithTimeout(ctx, bareRequestTimeout)
	obs, err := cc.Observe(octx, messages.PathPCPUplink, func(n *pool.Message) {
		if body, err := n.ReadBody(); err == nil && pcp.IsPCP(body) {
			p.exchanges.Add(1)
			frames <- body
		}
	})
	cancel()
	if err != nil {
		return fmt.Errorf("observe: %w", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(ctx, bareRequestTimeout)
		_ = obs.Cancel(ctx)
		cancel()
	}()
	put := func(frame []byte) error {
		p.exchanges.Add(1)
		ctx, cancel := context.WithTimeout(ctx, bareRequestTimeout)
		defer cancel()
		res, err := cc.Put(ctx, messages.PathPCPDownlink, message.AppOctets, bytes.NewReader(frame))
		if err != nil {
			return err
		}
		defer cc.ReleaseMessage(res)
		if res.Code() != codes.Changed {
			return fmt.Errorf("write of %x: %v", frame[3], res.Code())
		}
		return nil
	}
	next := func() (pcp.Message, error) {
		t := clock.Real().NewTimer(2 * bareRequestTimeout) // a lost 0x15 is asked again after 30 s
		defer t.Stop()
		select {
		case f := <-frames:
			return pcp.DecodeUplink(f)
		case <-t.C():
			return nil, errors.New("no PCP frame from the device")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err := put(pcp.EncodeQueryVersion()); err != nil {
		return err
	}
	if m, err := next(); err != nil {
		return err
	} else if _, ok := m.(pcp.VersionResponse); !ok {
		return fmt.Errorf("%v for 0x13", m.Code())
	}
	p.exchanges.Add(1)
	rctx, cancel := context.WithTimeout(ctx, bareRequestTimeout)
	res, err := cc.Get(rctx, messages.PathConnMon)
	cancel()
	if err != nil {
		return fmt.Errorf("read of the radio: %w", err)
	}
	cc.ReleaseMessage(res)
	count := (len(p.pkg) + bareSegmentSize - 1) / bareSegmentSize
	notify, err := pcp.EncodeNotify(pcp.NotifyNewVersion{Version: p.version, SegmentSize: bareSegmentSize, SegmentCount: uint16(count), CheckCode: p.check})
	if err != nil {
		return err
	}
	if err := put(notify); err != nil {
		return err
	}
	for {
		m, err := next()
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case pcp.NotifyResponse, pcp.ExecuteResponse:
		case pcp.SegmentRequest:
			off, n, ok := pcp.SegmentRange(int64(len(p.pkg)), bareSegmentSize, m.SegmentNo)
			if !ok {
				return fmt.Errorf("segment %d", m.SegmentNo)
			}
			frame, err := pcp.EncodeSegmentResponse(pcp.SegmentResponse{SegmentNo: m.SegmentNo, Data: p.pkg[off : off+int64(n)]})
			if err != nil {
				return err
			}
			if err := put(frame); err != nil {
				return err
			}
		case pcp.DownloadResult:
			if err := put(pcp.EncodeDownloadResultAck(pcp.DownloadResultAck{})); err != nil {
				return err
			}
			if err := put(pcp.EncodeExecute()); err != nil {
				return err
			}
		case pcp.UpgradeResult:
			if m.Version != p.version {
				return fmt.Errorf("upgraded to %q", m.Version)
			}
			return put(pcp.EncodeUpgradeResultAck(pcp.UpgradeResultAck{}))
		default:
			return fmt.Errorf("unexpected %v", m.Code())
		}
	}
}

// barePCPRun upgrades pcpDevices devices (IDs prefix0..) to content on the
// bare go-coap server and returns, as otafleetPCPRun does, this process's
// CPU and the time from the first upgrade's start to the last one's end,
// the exchanges the server counted and what the devices did.
func barePCPRun(b *testing.B, prefix string, content []byte) (time.Duration, time.Duration, uint64, pcpFleetStats) {
	b.Helper()
	p := &barePCP{pkg: content, version: "V2.0"}
	router := mux.NewRouter()
	router.DefaultHandleFunc(p.handle)
	lis, err := coapnet.NewListenUDP("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	// A registration's connection lives as long as the run (go-coap's
	// default closes it after 16 s without a message, which a device that
	// registered early spends waiting for the others).
	srv := udp.NewServer(options.WithMux(router), options.WithBlockwise(false, blockwise.SZX1024, time.Minute),
		options.WithInactivityMonitor(time.Hour, func(cc *client.Conn) { _ = cc.Close() }))
	go func() { _ = srv.Serve(lis) }()
	defer func() { srv.Stop(); lis.Close() }()
	fleet := startPCPFleet(b, lis.LocalAddr().String(), prefix, pcpDevices)
	p.mu.Lock()
	conns := p.conns
	p.mu.Unlock()
	if len(conns) != pcpDevices {
		b.Fatalf("%d of %d devices registered", len(conns), pcpDevices)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ex0 := p.exchanges.Load()
	rc := clock.Real()
	if *bareGCFloor {
		var busy atomic.Bool
		busy.Store(true)
		defer busy.Store(false)
		defer gctune.Start(100, gctune.While(gctune.DefaultFloor, busy.Load)).Stop()
	}
	start, cpu0 := rc.Now(), cpuTime()
	var wg sync.WaitGroup
	errs := make(chan error, len(conns))
	for _, cc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.upgrade(ctx, cc); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	cpu, elapsed := cpuTime()-cpu0, rc.Since(start)
	exchanges := p.exchanges.Load() - ex0
	close(errs)
	var failed []error
	for err := range errs {
		failed = append(failed, err)
	}
	if len(failed) > pcpDevices/100 {
		b.Fatalf("%d bare PCP upgrades failed: %v", len(failed), errors.Join(failed...))
	}
	st := fleet.stop()
	if st.upgrades < pcpDevices-len(failed) {
		b.Fatalf("%d of %d devices upgraded on the bare server (%d failed)", st.upgrades, pcpDevices, len(failed))
	}
	st.failed = len(failed)
	return cpu, elapsed, exchanges, st
}
