package lwm2msim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport/lwm2m/lwm2mcodec"
	"github.com/otafleet/otafleet/transport/pcp"
)

var t0 = time.Date(2025, 4, 14, 1, 0, 0, 0, time.UTC)

func ptr(v int32) *int32 { return &v }

// testPackageData returns n deterministic bytes.
func testPackageData(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// hookCh returns a channel of the device's events and the hook for its
// Config.
func hookCh() (chan string, func(string)) {
	ch := make(chan string, 256)
	return ch, func(ev string) {
		select {
		case ch <- ev:
		default:
		}
	}
}

// waitHook waits for the device event want, skipping others.
func waitHook(t *testing.T, ch chan string, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	for {
		select {
		case ev := <-ch:
			if ev == want {
				return
			}
		case <-ctx.Done():
			t.Fatalf("device event %q did not come within %v", want, waitFor)
		}
	}
}

// fixture is a device registered with a test server, on a fake clock.
type fixture struct {
	ts     *testServer
	clk    *clocktest.Clock
	d      *Device
	reg    *registration
	events chan string
	cfg    Config
}

func start(t *testing.T, cfg Config) *fixture {
	t.Helper()
	f := &fixture{ts: newTestServer(t), clk: clocktest.New(t0)}
	var hook func(string)
	f.events, hook = hookCh()
	cfg.Server = f.ts.addr
	if cfg.Endpoint == "" {
		cfg.Endpoint = "dev-" + t.Name()
	}
	cfg.Clock = f.clk
	cfg.hook = hook
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	d, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(d.Stop)
	f.d, f.cfg = d, d.cfg
	f.reg = f.ts.waitEvent(t, "register")
	waitHook(t, f.events, "registered")
	return f
}

// waitRegister waits until the server got a new registration and the device
// its answer.
func (f *fixture) waitRegister(t *testing.T) *registration {
	t.Helper()
	reg := f.ts.waitEvent(t, "register")
	waitHook(t, f.events, "registered")
	return reg
}

func (f *fixture) text(t *testing.T, path string) string {
	t.Helper()
	return f.textOn(t, f.reg, path)
}

// textOn reads path as text/plain over the registration reg.
func (f *fixture) textOn(t *testing.T, reg *registration, path string) string {
	t.Helper()
	r := f.ts.get(t, reg, path, int(message.TextPlain))
	if r.code != codes.Content || r.cf != int(message.TextPlain) {
		t.Fatalf("GET %s: %v cf %d, want 2.05 text/plain", path, r.code, r.cf)
	}
	return string(r.body)
}

// waitUpdate waits until the server got a registration update and the
// device its answer.
func (f *fixture) waitUpdate(t *testing.T) *registration {
	t.Helper()
	reg := f.ts.waitEvent(t, "update")
	waitHook(t, f.events, "update")
	return reg
}

func checkStats(t *testing.T, d *Device, want Stats) {
	t.Helper()
	got := d.Stats()
	got.Notifications = 0 // timing-dependent details are checked elsewhere
	if got != want {
		t.Errorf("Stats = %+v\nwant    %+v", got, want)
	}
}

func TestRegistrationReadsAndUpdates(t *testing.T) {
	f := start(t, Config{
		Endpoint: "imei-1", FwVersion: "1.0", SwVersion: "s1",
		RSRP: ptr(-95), SINR: ptr(7), CellID: 0x1234567,
	})
	ts, reg := f.ts, f.reg
	want := map[string]string{"ep": "imei-1", "lt": "300", "lwm2m": "1.1", "b": "U"}
	if !reflect.DeepEqual(reg.query, want) {
		t.Errorf("registration query %v, want %v", reg.query, want)
	}
	if w := []string{"/1/0", "/3/0", "/4/0", "/5/0"}; !reflect.DeepEqual(reg.objects, w) {
		t.Errorf("registered objects %v, want %v (links %s)", reg.objects, w, reg.links)
	}
	if w := `</>;ct=11543;rt="oma.lwm2m",</1/0>,</3/0>,</4/0>,</5/0>`; reg.links != w {
		t.Errorf("registration payload %s, want %s", reg.links, w)
	}

	if v := f.text(t, "/3/0/3"); v != "1.0" {
		t.Errorf("/3/0/3 = %q", v)
	}
	if v := f.text(t, "/4/0/8"); v != strconv.Itoa(0x1234567) {
		t.Errorf("/4/0/8 = %q", v)
	}
	if v := f.text(t, "/5/0/3"); v != "0" {
		t.Errorf("/5/0/3 = %q", v)
	}
	if v := f.text(t, "/5/0/5"); v != "0" {
		t.Errorf("/5/0/5 = %q", v)
	}
	// Without Accept a resource comes as text/plain too.
	if r := ts.get(t, reg, "/3/0/3", -1); r.cf != 0 || string(r.body) != "1.0" {
		t.Errorf("/3/0/3 without Accept: cf %d %q", r.cf, r.body)
	}
	// A resource read in TLV.
	r := ts.get(t, reg, "/3/0/3", int(lwm2mcodec.FormatTLV))
	vs, err := lwm2mcodec.Decode(uint16(r.cf), lwm2mcodec.ResourcePath(3, 0, 3), r.body)
	if s, ok := lwm2mcodec.StringAt(vs, lwm2mcodec.ResourcePath(3, 0, 3)); err != nil || !ok || s != "1.0" {
		t.Errorf("/3/0/3 in TLV: %v %q %v", err, s, ok)
	}

	// /4/0 in the default TLV.
	r = ts.get(t, reg, "/4/0", -1)
	if r.code != codes.Content || r.cf != int(lwm2mcodec.FormatTLV) {
		t.Fatalf("GET /4/0: %v cf %d", r.code, r.cf)
	}
	checkRadio(t, r, -95, 7, 0x1234567)

	// Errors.
	for _, tc := range []struct {
		name string
		r    response
		want codes.Code
	}{
		{"unknown object", ts.get(t, reg, "/7/0", -1), codes.NotFound},
		{"unknown resource", ts.get(t, reg, "/3/0/99", -1), codes.NotFound},
		{"object 19 absent", ts.get(t, reg, "/19/0/0", -1), codes.NotFound},
		{"read executable", ts.get(t, reg, "/5/0/2", -1), codes.MethodNotAllowed},
		{"read root", ts.get(t, reg, "/", -1), codes.MethodNotAllowed},
		{"not an LwM2M path", ts.get(t, reg, "/abc", -1), codes.NotFound},
		{"unsupported accept", ts.get(t, reg, "/3/0/3", int(message.AppJSON)), codes.NotAcceptable},
		{"text of an instance", ts.get(t, reg, "/3/0", 0), codes.NotAcceptable},
		{"execute in state 0", ts.post(t, reg, "/5/0/2"), codes.MethodNotAllowed},
		{"execute elsewhere", ts.post(t, reg, "/3/0/3"), codes.MethodNotAllowed},
		{"delete", ts.delete(t, reg, "/3/0"), codes.MethodNotAllowed},
		{"write read-only", ts.put(t, reg, "/3/0/3", message.TextPlain, []byte("x")), codes.MethodNotAllowed},
		{"write unknown", ts.put(t, reg, "/9/0/1", message.TextPlain, []byte("x")), codes.NotFound},
		{"write bad TLV", ts.put(t, reg, "/5/0/1", message.AppLwm2mTLV, []byte{0xff, 0xff}), codes.BadRequest},
		{"write unknown format", ts.put(t, reg, "/5/0/1", message.MediaType(9999), []byte("x")), codes.UnsupportedMediaType},
		{"write not UTF-8", ts.put(t, reg, "/5/0/1", message.TextPlain, []byte{0xff}), codes.BadRequest},
	} {
		if tc.r.code != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, tc.r.code, tc.want)
		}
	}

	// Registration updates every lifetime/2 of the device's clock.
	f.clk.Advance(150 * time.Second)
	if got := f.waitUpdate(t); got != reg {
		t.Errorf("update of registration %s, want %s", got.id, reg.id)
	}
	f.clk.Advance(150 * time.Second)
	f.waitUpdate(t)
	checkStats(t, f.d, Stats{Registrations: 1, Updates: 2})

	f.d.Stop()
	ts.waitEvent(t, "deregister")
	if f.d.Wake() == nil {
		t.Error("Wake after Stop succeeded")
	}
}

// checkRadio decodes a read of /4/0.
func checkRadio(t *testing.T, r response, rsrp, sinr, cell int64) {
	t.Helper()
	vs, err := lwm2mcodec.Decode(uint16(r.cf), lwm2mcodec.InstancePath(4, 0), r.body)
	if err != nil {
		t.Fatalf("decode /4/0 (cf %d): %v", r.cf, err)
	}
	for _, c := range []struct {
		res  int32
		want int64
	}{{2, rsrp}, {11, sinr}, {8, cell}} {
		v, ok := lwm2mcodec.IntAt(vs, lwm2mcodec.ResourcePath(4, 0, c.res))
		if !ok || v != c.want {
			t.Errorf("/4/0/%d = %d (%v), want %d", c.res, v, ok, c.want)
		}
	}
}

func TestRadioFormats(t *testing.T) {
	for _, cf := range []uint16{lwm2mcodec.FormatTLV, lwm2mcodec.FormatSenMLJSON, lwm2mcodec.FormatSenMLCBOR, lwm2mcodec.FormatLwM2MJSON} {
		t.Run(strconv.Itoa(int(cf)), func(t *testing.T) {
			f := start(t, Config{RSRP: ptr(-110), SINR: ptr(-3), CellID: 99, RadioFormat: cf})
			r := f.ts.get(t, f.reg, "/4/0", -1)
			if r.cf != int(cf) {
				t.Fatalf("/4/0 content format %d, want %d", r.cf, cf)
			}
			checkRadio(t, r, -110, -3, 99)
			// An Accept option wins over RadioFormat.
			r = f.ts.get(t, f.reg, "/4/0", int(lwm2mcodec.FormatSenMLJSON))
			if r.cf != int(lwm2mcodec.FormatSenMLJSON) {
				t.Fatalf("/4/0 with Accept 110: content format %d", r.cf)
			}
			checkRadio(t, r, -110, -3, 99)
		})
	}
	t.Run("unset values are omitted", func(t *testing.T) {
		f := start(t, Config{RSRP: ptr(-80)})
		r := f.ts.get(t, f.reg, "/4/0", -1)
		vs, err := lwm2mcodec.Decode(uint16(r.cf), lwm2mcodec.InstancePath(4, 0), r.body)
		if err != nil || len(vs) != 1 || vs[0].Path != lwm2mcodec.ResourcePath(4, 0, 2) {
			t.Fatalf("/4/0 = %v, %v; want RSRP only", vs, err)
		}
		if r := f.ts.get(t, f.reg, "/4/0/8", -1); r.code != codes.NotFound {
			t.Errorf("/4/0/8 without a cell ID: %v, want 4.04", r.code)
		}
	})
}

func TestReRegisterWhenForgotten(t *testing.T) {
	f := start(t, Config{FwVersion: "1.0", LwM2MVersion: "1.0", Lifetime: time.Hour})
	if q := f.reg.query; q["lwm2m"] != "1.0" || q["lt"] != "3600" {
		t.Errorf("registration query %v", q)
	}
	f.ts.forget(f.reg.id)
	if err := f.d.Wake(); err != nil {
		t.Fatal(err)
	}
	reg2 := f.waitRegister(t)
	if reg2.id == f.reg.id || reg2.remote != f.reg.remote {
		t.Errorf("re-registration %s from %s; want a new one from the same socket %s", reg2.id, reg2.remote, f.reg.remote)
	}
	if v := f.textOn(t, reg2, "/3/0/3"); v != "1.0" {
		t.Errorf("/3/0/3 = %q", v)
	}
	checkStats(t, f.d, Stats{Registrations: 2})
	f.ts.noEvent(t)
}

// A server that goes away (its socket closed: the device's next message is
// answered by ICMP port-unreachable, and go-coap closes the device's
// connection) and comes back on the same address: the device notices, and
// registers again from a new socket, with backoff while the server is away.
func TestRegisterAgainAfterConnectionLost(t *testing.T) {
	f := start(t, Config{FwVersion: "1.0", Behaviour: Behaviour{RestartDelay: time.Second}})
	f.ts.down()
	if err := f.d.Wake(); err == nil {
		t.Fatal("registration update to a closed server socket succeeded")
	}
	waitHook(t, f.events, "restarting")
	if got := f.d.LocalAddr(); got != "" {
		t.Errorf("LocalAddr after the connection was lost = %q", got)
	}
	if err := f.d.Wake(); !errors.Is(err, errNotRegistered) {
		t.Errorf("Wake while registering again: %v, want errNotRegistered", err)
	}
	// The first attempt, after RestartDelay, fails: the server is still
	// away. The next one waits twice as long.
	f.clk.Advance(time.Second)
	waitHook(t, f.events, "restarting")
	f.ts.up(t)
	f.clk.Advance(time.Second)
	f.ts.noEvent(t)
	f.clk.Advance(time.Second)
	reg2 := f.waitRegister(t)
	if reg2.id == f.reg.id || reg2.remote == f.reg.remote {
		t.Errorf("registration after the lost connection: id %s from %s, before %s from %s; want a new one from a new socket", reg2.id, reg2.remote, f.reg.id, f.reg.remote)
	}
	if v := f.textOn(t, reg2, "/3/0/3"); v != "1.0" {
		t.Errorf("/3/0/3 = %q", v)
	}
	if err := f.d.Wake(); err != nil {
		t.Errorf("Wake after registering again: %v", err)
	}
	f.waitUpdate(t)
	checkStats(t, f.d, Stats{Registrations: 2, Updates: 1, Reconnects: 1})
	// The backoff starts over: a second loss waits RestartDelay again.
	f.ts.down()
	if err := f.d.Wake(); err == nil {
		t.Fatal("registration update to a closed server socket succeeded")
	}
	waitHook(t, f.events, "restarting")
	f.ts.up(t)
	f.clk.Advance(time.Second)
	f.waitRegister(t)
	checkStats(t, f.d, Stats{Registrations: 3, Updates: 1, Reconnects: 2})
}

func TestUnknownEndpoint(t *testing.T) {
	ts := newTestServer(t)
	ts.allow("someone-else")
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	d, err := Start(ctx, Config{Server: ts.addr, Endpoint: "stranger", Clock: clocktest.New(t0)})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != codes.Forbidden || se.Op != "register" {
		t.Fatalf("Start = %v, %v; want a StatusError 4.03", d, err)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, cfg := range []Config{
		{Server: "127.0.0.1:1"},
		{Endpoint: "x"},
		{Server: "127.0.0.1:1", Endpoint: "x", BlockSize: 1000},
		{Server: "127.0.0.1:1", Endpoint: "x", RadioFormat: 42},
		{Server: "127.0.0.1:1", Endpoint: "x", LocalAddr: "localhost"},
		{Server: "127.0.0.1:1", Endpoint: "x", LocalAddr: "127.0.0.1:5683"},
		{Server: "127.0.0.1:1", Endpoint: "x", Behaviour: Behaviour{DropRate: -0.1}},
		{Server: "127.0.0.1:1", Endpoint: "x", Behaviour: Behaviour{DropRate: 1.5}},
		{Server: "127.0.0.1:1", Endpoint: "x", Behaviour: Behaviour{DropRate: math.NaN()}},
	} {
		if _, err := Start(context.Background(), cfg); err == nil {
			t.Errorf("Start(%+v) succeeded", cfg)
		}
	}
}

func TestFirmwareUpgrade(t *testing.T) {
	for _, tc := range []struct {
		name      string
		blockSize int
		size      int
		non       bool
	}{
		{"1024-byte blocks", 0, 5000, false},
		{"256-byte blocks", 256, 3000, false},
		{"exact multiple", 512, 2048, false},
		{"smaller than a block", 0, 700, false},
		{"NON notifications", 0, 3000, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := start(t, Config{FwVersion: "1.0", BlockSize: tc.blockSize, NotifyNON: tc.non, NewVersion: func(id string) string { return "v" + id }})
			ts, reg := f.ts, f.reg
			data := testPackageData(tc.size)
			uri := ts.addPackage("2.0", data)

			state := ts.observe(t, reg, "/5/0/3")
			result := ts.observe(t, reg, "/5/0/5")
			if n := state.next(t); string(n.body) != "0" || n.cf != 0 {
				t.Fatalf("first answer of the observation: %q cf %d", n.body, n.cf)
			}
			if n := result.next(t); string(n.body) != "0" {
				t.Fatalf("first answer of the observation of /5/0/5: %q", n.body)
			}
			if r := ts.put(t, reg, "/5/0/1", message.TextPlain, []byte(uri)); r.code != codes.Changed {
				t.Fatalf("write /5/0/1: %v", r.code)
			}
			if seen := state.untilInt(t, 2); !reflect.DeepEqual(seen, []int{1, 2}) {
				t.Errorf("states %v, want [1 2]", seen)
			}
			bs := tc.blockSize
			if bs == 0 {
				bs = 1024
			}
			nBlocks := (tc.size + bs - 1) / bs
			var wantLog []blockReq
			for i := range nBlocks {
				wantLog = append(wantLog, blockReq{pkg: "2.0", num: int64(i), size: int64(bs)})
			}
			if got := ts.blockLog(); !reflect.DeepEqual(got, wantLog) {
				t.Errorf("block requests %v, want %v", got, wantLog)
			}
			checkStats(t, f.d, Stats{Registrations: 1, BlocksFetched: nBlocks, SHA256: sha(data)})
			if v := f.text(t, "/5/0/1"); v != uri {
				t.Errorf("/5/0/1 = %q", v)
			}

			if r := ts.post(t, reg, "/5/0/2"); r.code != codes.Changed {
				t.Fatalf("execute: %v", r.code)
			}
			if seen := state.untilInt(t, 3); !reflect.DeepEqual(seen, []int{3}) {
				t.Errorf("states %v, want [3]", seen)
			}
			f.clk.Advance(f.cfg.Behaviour.UpdateDelay)
			if seen := result.untilInt(t, 1); !reflect.DeepEqual(seen, []int{1}) {
				t.Errorf("update results %v, want [1]", seen)
			}
			if seen := state.untilInt(t, 0); !reflect.DeepEqual(seen, []int{0}) {
				t.Errorf("states %v, want [0]", seen)
			}
			if v := f.text(t, "/3/0/3"); v != "v2.0" {
				t.Errorf("/3/0/3 after the update = %q, want v2.0", v)
			}
			if fw, _ := f.d.Versions(); fw != "v2.0" {
				t.Errorf("Versions fw = %q", fw)
			}
			checkStats(t, f.d, Stats{Registrations: 1, BlocksFetched: nBlocks, Executes: 1, Upgrades: 1, SHA256: sha(data)})
			if n := f.d.Stats().Notifications; n < 5 {
				t.Errorf("%d notifications sent, want at least 5", n)
			}

			// Cancel, then reset object 5 with an empty URI.
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			if err := state.obs.Cancel(ctx); err != nil {
				t.Fatalf("cancel: %v", err)
			}
			if r := ts.put(t, reg, "/5/0/1", message.TextPlain, nil); r.code != codes.Changed {
				t.Fatalf("reset: %v", r.code)
			}
			if st, res := f.d.FirmwareState(); st != 0 || res != 0 {
				t.Errorf("after reset: state %d result %d", st, res)
			}
		})
	}
}

func TestDownloadResumesAfterRestart(t *testing.T) {
	f := start(t, Config{FwVersion: "1.0", Behaviour: Behaviour{StopAfterBlocks: 2, RestartDelay: time.Second}})
	ts, reg := f.ts, f.reg
	data := testPackageData(5000)
	uri := ts.addPackage("fw-2", data)
	if r := ts.put(t, reg, "/5/0/1", message.TextPlain, []byte(uri)); r.code != codes.Changed {
		t.Fatalf("write /5/0/1: %v", r.code)
	}
	waitHook(t, f.events, "restarting")
	if got := f.d.LocalAddr(); got != "" {
		t.Errorf("LocalAddr while restarting = %q", got)
	}
	f.clk.Advance(time.Second)
	reg2 := f.waitRegister(t)
	if reg2.id == reg.id || reg2.remote == reg.remote {
		t.Errorf("registration after restart: id %s from %s, before %s from %s; want a new one from a new socket", reg2.id, reg2.remote, reg.id, reg.remote)
	}
	state := ts.observe(t, reg2, "/5/0/3")
	state.untilInt(t, 2)
	var nums []int64
	for _, b := range ts.blockLog() {
		nums = append(nums, b.num)
	}
	if want := []int64{0, 1, 2, 3, 4}; !reflect.DeepEqual(nums, want) {
		t.Errorf("blocks asked %v, want %v (resumed, no block twice)", nums, want)
	}
	checkStats(t, f.d, Stats{Registrations: 2, BlocksFetched: 5, Restarts: 1, SHA256: sha(data)})

	// The same URI written again keeps the downloaded package.
	if r := ts.put(t, reg2, "/5/0/1", message.TextPlain, []byte(uri)); r.code != codes.Changed {
		t.Fatalf("write /5/0/1 again: %v", r.code)
	}
	if st, _ := f.d.FirmwareState(); st != 2 {
		t.Errorf("state after the same URI again: %d, want 2", st)
	}
	if r := ts.post(t, reg2, "/5/0/2"); r.code != codes.Changed {
		t.Fatalf("execute: %v", r.code)
	}
	f.clk.Advance(f.cfg.Behaviour.UpdateDelay)
	state.untilInt(t, 0)
	if fw, _ := f.d.Versions(); fw != "fw-2" {
		t.Errorf("fw = %q, want the package ID fw-2", fw)
	}
}

func TestUpdateResultFailures(t *testing.T) {
	t.Run("update fails (8)", func(t *testing.T) {
		f := start(t, Config{FwVersion: "1.0", Behaviour: Behaviour{UpdateResult: 8}})
		uri := f.ts.addPackage("2.0", testPackageData(1500))
		state := f.ts.observe(t, f.reg, "/5/0/3")
		f.ts.put(t, f.reg, "/5/0/1", message.TextPlain, []byte(uri))
		state.untilInt(t, 2)
		f.ts.post(t, f.reg, "/5/0/2")
		state.untilInt(t, 3)
		f.clk.Advance(f.cfg.Behaviour.UpdateDelay)
		state.untilInt(t, 2)
		if v := f.text(t, "/5/0/5"); v != "8" {
			t.Errorf("/5/0/5 = %q, want 8", v)
		}
		if fw, _ := f.d.Versions(); fw != "1.0" {
			t.Errorf("fw = %q, want 1.0 kept", fw)
		}
		checkStats(t, f.d, Stats{Registrations: 1, BlocksFetched: 2, Executes: 1, SHA256: sha(testPackageData(1500))})
	})
	t.Run("download fails (5)", func(t *testing.T) {
		f := start(t, Config{FwVersion: "1.0", Behaviour: Behaviour{UpdateResult: 5}})
		uri := f.ts.addPackage("2.0", testPackageData(1500))
		result := f.ts.observe(t, f.reg, "/5/0/5")
		state := f.ts.observe(t, f.reg, "/5/0/3")
		f.ts.put(t, f.reg, "/5/0/1", message.TextPlain, []byte(uri))
		if seen := state.untilInt(t, 1); seen[len(seen)-1] != 1 {
			t.Fatal(seen)
		}
		result.untilInt(t, 5)
		if seen := state.untilInt(t, 0); !reflect.DeepEqual(seen, []int{0}) {
			t.Errorf("states after downloading %v, want [0]", seen)
		}
		if r := f.ts.post(t, f.reg, "/5/0/2"); r.code != codes.MethodNotAllowed {
			t.Errorf("execute after a failed download: %v", r.code)
		}
	})
	t.Run("unsupported protocol (9)", func(t *testing.T) {
		f := start(t, Config{FwVersion: "1.0"})
		f.ts.put(t, f.reg, "/5/0/1", message.TextPlain, []byte("coaps://example.com/fw/1"))
		if st, res := f.d.FirmwareState(); st != 0 || res != 9 {
			t.Errorf("state %d result %d, want 0 and 9", st, res)
		}
		f.ts.put(t, f.reg, "/5/0/1", message.TextPlain, []byte("coap://"))
		if st, res := f.d.FirmwareState(); st != 0 || res != 7 {
			t.Errorf("state %d result %d, want 0 and 7", st, res)
		}
	})
	t.Run("missing package (7)", func(t *testing.T) {
		f := start(t, Config{FwVersion: "1.0"})
		result := f.ts.observe(t, f.reg, "/5/0/5")
		f.ts.put(t, f.reg, "/5/0/1", message.TextPlain, []byte("coap://"+f.ts.addr+"/fw/none"))
		result.untilInt(t, 7)
	})
}

func TestRebootOnUpdate(t *testing.T) {
	f := start(t, Config{FwVersion: "1.0", Behaviour: Behaviour{RebootOnUpdate: true, UpdateDelay: time.Minute, RestartDelay: 5 * time.Second}})
	ts := f.ts
	uri := ts.addPackage("2.0", testPackageData(2500))
	state := ts.observe(t, f.reg, "/5/0/3")
	ts.put(t, f.reg, "/5/0/1", message.TextPlain, []byte(uri))
	state.untilInt(t, 2)
	ts.post(t, f.reg, "/5/0/2")
	state.untilInt(t, 3)
	f.clk.Advance(time.Minute)
	waitHook(t, f.events, "restarting")
	f.clk.Advance(5 * time.Second)
	reg2 := f.waitRegister(t)
	if v := f.textOn(t, reg2, "/5/0/5"); v != "1" {
		t.Errorf("/5/0/5 after the reboot = %q, want 1", v)
	}
	if v := f.textOn(t, reg2, "/3/0/3"); v != "2.0" {
		t.Errorf("/3/0/3 after the reboot = %q, want 2.0", v)
	}
	if v := f.textOn(t, reg2, "/5/0/3"); v != "0" {
		t.Errorf("/5/0/3 after the reboot = %q, want 0", v)
	}
	checkStats(t, f.d, Stats{Registrations: 2, BlocksFetched: 3, Executes: 1, Upgrades: 1, Restarts: 1, SHA256: sha(testPackageData(2500))})
}

func TestQueueMode(t *testing.T) {
	f := start(t, Config{FwVersion: "1.0", Behaviour: Behaviour{QueueMode: true, AwakeWindow: 10 * time.Second}})
	ts, reg := f.ts, f.reg
	if reg.query["b"] != "UQ" {
		t.Errorf("binding %q, want UQ", reg.query["b"])
	}
	// Awake right after registering.
	if v := f.text(t, "/3/0/3"); v != "1.0" {
		t.Fatalf("/3/0/3 = %q", v)
	}
	f.clk.Advance(11 * time.Second)
	ts.requestIgnored(t, reg, "/3/0/3", f.events)
	// Wake sends an update, which opens the window again.
	if err := f.d.Wake(); err != nil {
		t.Fatal(err)
	}
	f.waitUpdate(t)
	if v := f.text(t, "/3/0/3"); v != "1.0" {
		t.Fatalf("/3/0/3 after Wake = %q", v)
	}
	// The periodic update (lifetime/2 after the last one) wakes it too.
	f.clk.Advance(11 * time.Second)
	ts.requestIgnored(t, reg, "/5/0/3", f.events)
	f.clk.Advance(150*time.Second - 11*time.Second)
	f.waitUpdate(t)
	if v := f.text(t, "/5/0/3"); v != "0" {
		t.Fatalf("/5/0/3 after the periodic update = %q", v)
	}
	s := f.d.Stats()
	if s.Ignored != 2 || s.Updates != 2 || s.Registrations != 1 {
		t.Errorf("Stats = %+v, want 2 ignored, 2 updates", s)
	}
}

func TestSilent(t *testing.T) {
	f := start(t, Config{FwVersion: "1.0", Behaviour: Behaviour{Silent: true}})
	f.ts.requestIgnored(t, f.reg, "/3/0/3", f.events)
	if err := f.d.Wake(); err != nil {
		t.Fatal(err)
	}
	f.waitUpdate(t)
	f.ts.requestIgnored(t, f.reg, "/3/0/3", f.events)
}

// platform drives the PCP side of a test: it writes frames to /19/1/0 and
// reads the device's frames from its observation of /19/0/0.
type platform struct {
	t   *testing.T
	ts  *testServer
	reg *registration
	up  *observation
}

func newPlatform(t *testing.T, ts *testServer, reg *registration) *platform {
	p := &platform{t: t, ts: ts, reg: reg}
	p.up = ts.observe(t, reg, "/19/0/0")
	if n := p.up.next(t); len(n.body) != 0 || n.cf != int(message.AppOctets) {
		t.Fatalf("first answer of /19/0/0: %x cf %d, want empty opaque", n.body, n.cf)
	}
	return p
}

func (p *platform) send(b []byte) {
	p.t.Helper()
	if r := p.ts.put(p.t, p.reg, "/19/1/0", message.AppOctets, b); r.code != codes.Changed {
		p.t.Fatalf("write /19/1/0: %v", r.code)
	}
}

func (p *platform) sendMsg(m pcp.Message) {
	p.t.Helper()
	b, err := pcp.EncodeMessage(m)
	if err != nil {
		p.t.Fatal(err)
	}
	p.send(b)
}

func (p *platform) recv() pcp.Message {
	p.t.Helper()
	b := p.up.uplink(p.t)
	if !pcp.IsPCP(b) {
		p.t.Fatalf("uplink %x is not PCP", b)
	}
	m, err := pcp.DecodeUplink(b)
	if err != nil {
		p.t.Fatalf("uplink %x: %v", b, err)
	}
	return m
}

func (p *platform) expect(want pcp.Message) {
	p.t.Helper()
	if got := p.recv(); !reflect.DeepEqual(got, want) {
		p.t.Fatalf("device sent %#v, want %#v", got, want)
	}
}

// serveSegments answers the device's segment requests from data until it
// reports the download result, and returns that report and the segment
// numbers asked.
func (p *platform) serveSegments(version string, data []byte, segSize uint16) (pcp.DownloadResult, []uint16) {
	p.t.Helper()
	var asked []uint16
	for {
		switch m := p.recv().(type) {
		case pcp.SegmentRequest:
			if m.Version != version {
				p.t.Fatalf("segment request for %q, want %q", m.Version, version)
			}
			asked = append(asked, m.SegmentNo)
			off, n, ok := pcp.SegmentRange(int64(len(data)), segSize, m.SegmentNo)
			if !ok {
				p.t.Fatalf("segment %d does not exist", m.SegmentNo)
			}
			p.sendMsg(pcp.SegmentResponse{Result: messages.PcpResultOK, SegmentNo: m.SegmentNo, Data: data[off : off+int64(n)]})
		case pcp.DownloadResult:
			return m, asked
		default:
			p.t.Fatalf("device sent %#v during the download", m)
		}
	}
}

func seq(n int) []uint16 {
	out := make([]uint16, n)
	for i := range out {
		out[i] = uint16(i)
	}
	return out
}

func TestPCPUpgrade(t *testing.T) {
	f := start(t, Config{SwVersion: "1.0", ObjectsPCP: true, VerifyCheckCode: true})
	if w := []string{"/1/0", "/3/0", "/4/0", "/5/0", "/19/0", "/19/1"}; !reflect.DeepEqual(f.reg.objects, w) {
		t.Errorf("registered objects %v, want %v", f.reg.objects, w)
	}
	p := newPlatform(t, f.ts, f.reg)
	p.send(pcp.EncodeQueryVersion())
	p.expect(pcp.VersionResponse{Result: messages.PcpResultOK, Version: "1.0"})

	data := testPackageData(1234)
	const segSize = 100
	count := pcp.SegmentCount(int64(len(data)), segSize)
	p.sendMsg(pcp.NotifyNewVersion{Version: "2.0", SegmentSize: segSize, SegmentCount: count, CheckCode: pcp.CheckCode(sha256.Sum256(data))})
	p.expect(pcp.NotifyResponse{Result: messages.PcpResultOK})
	res, asked := p.serveSegments("2.0", data, segSize)
	if res.Status != messages.PcpResultOK {
		t.Fatalf("download result 0x%02X", res.Status)
	}
	if !reflect.DeepEqual(asked, seq(int(count))) {
		t.Errorf("segments asked %v", asked)
	}
	p.send(pcp.EncodeDownloadResultAck(pcp.DownloadResultAck{Result: messages.PcpResultOK}))
	p.send(pcp.EncodeExecute())
	p.expect(pcp.ExecuteResponse{Result: messages.PcpResultOK})
	f.clk.Advance(f.cfg.Behaviour.UpdateDelay)
	p.expect(pcp.UpgradeResult{Result: messages.PcpResultOK, Version: "2.0"})
	p.send(pcp.EncodeUpgradeResultAck(pcp.UpgradeResultAck{Result: messages.PcpResultOK}))
	if _, sw := f.d.Versions(); sw != "2.0" {
		t.Errorf("sw = %q", sw)
	}
	if v := f.text(t, "/3/0/19"); v != "2.0" {
		t.Errorf("/3/0/19 = %q", v)
	}
	checkStats(t, f.d, Stats{Registrations: 1, SegmentsFetched: int(count), Executes: 1, Upgrades: 1, SHA256: sha(data)})

	// Now the latest: a new notification of the same version is refused,
	// and business data on /19/1/0 is ignored.
	p.sendMsg(pcp.NotifyNewVersion{Version: "2.0", SegmentSize: segSize, SegmentCount: count})
	p.expect(pcp.NotifyResponse{Result: messages.PcpResultAlreadyLatest})
	p.send([]byte("business data"))
	p.send([]byte{0xFF, 0xFE, 0x01, 0x13, 0, 0, 0, 0}) // bad checksum
	p.send(pcp.EncodeQueryVersion())
	p.expect(pcp.VersionResponse{Result: messages.PcpResultOK, Version: "2.0"})
}

func TestPCPCheckCodeMismatch(t *testing.T) {
	f := start(t, Config{SwVersion: "1.0", ObjectsPCP: true, VerifyCheckCode: true})
	p := newPlatform(t, f.ts, f.reg)
	data := testPackageData(300)
	p.sendMsg(pcp.NotifyNewVersion{Version: "2.0", SegmentSize: 100, SegmentCount: 3, CheckCode: 0x1234})
	p.expect(pcp.NotifyResponse{Result: messages.PcpResultOK})
	if res, _ := p.serveSegments("2.0", data, 100); res.Status != messages.PcpResultVerificationFailed {
		t.Fatalf("download result 0x%02X, want 0x07", res.Status)
	}
	p.send(pcp.EncodeExecute())
	p.expect(pcp.ExecuteResponse{Result: messages.PcpResultInternalError})
}

func TestPCPResumeAfterRestart(t *testing.T) {
	f := start(t, Config{SwVersion: "1.0", ObjectsPCP: true, Behaviour: Behaviour{StopAfterBlocks: 3, RestartDelay: time.Second}})
	p := newPlatform(t, f.ts, f.reg)
	data := testPackageData(1000)
	p.sendMsg(pcp.NotifyNewVersion{Version: "2.0", SegmentSize: 100, SegmentCount: 10, CheckCode: 7})
	p.expect(pcp.NotifyResponse{Result: messages.PcpResultOK})
	var asked []uint16
	for range 3 {
		m, ok := p.recv().(pcp.SegmentRequest)
		if !ok {
			t.Fatalf("want a segment request, got %#v", m)
		}
		asked = append(asked, m.SegmentNo)
		off, n, _ := pcp.SegmentRange(1000, 100, m.SegmentNo)
		p.sendMsg(pcp.SegmentResponse{SegmentNo: m.SegmentNo, Data: data[off : off+int64(n)]})
	}
	waitHook(t, f.events, "restarting")
	f.clk.Advance(time.Second)
	reg2 := f.waitRegister(t)
	// The platform observes /19/0/0 again: the device carries on.
	p = newPlatform(t, f.ts, reg2)
	res, rest := p.serveSegments("2.0", data, 100)
	if res.Status != messages.PcpResultOK {
		t.Fatalf("download result 0x%02X", res.Status)
	}
	if asked = append(asked, rest...); !reflect.DeepEqual(asked, seq(10)) {
		t.Errorf("segments asked %v, want 0..9 once each", asked)
	}
	// A repeated 0x14 of the same package: already downloaded.
	p.sendMsg(pcp.NotifyNewVersion{Version: "2.0", SegmentSize: 100, SegmentCount: 10, CheckCode: 7})
	p.expect(pcp.NotifyResponse{Result: messages.PcpResultOK})
	p.expect(pcp.DownloadResult{Status: messages.PcpResultOK})
	checkStats(t, f.d, Stats{Registrations: 2, SegmentsFetched: 10, Restarts: 1, SHA256: sha(data)})
}

func TestPCPRebootOnUpdate(t *testing.T) {
	f := start(t, Config{SwVersion: "1.0", ObjectsPCP: true, Behaviour: Behaviour{RebootOnUpdate: true}})
	p := newPlatform(t, f.ts, f.reg)
	data := testPackageData(150)
	p.sendMsg(pcp.NotifyNewVersion{Version: "2.0", SegmentSize: 100, SegmentCount: 2})
	p.expect(pcp.NotifyResponse{Result: messages.PcpResultOK})
	p.serveSegments("2.0", data, 100)
	p.send(pcp.EncodeDownloadResultAck(pcp.DownloadResultAck{}))
	p.send(pcp.EncodeExecute())
	p.expect(pcp.ExecuteResponse{Result: messages.PcpResultOK})
	f.clk.Advance(f.cfg.Behaviour.UpdateDelay)
	waitHook(t, f.events, "restarting")
	f.clk.Advance(f.cfg.Behaviour.RestartDelay)
	reg2 := f.waitRegister(t)
	p = newPlatform(t, f.ts, reg2)
	p.expect(pcp.UpgradeResult{Result: messages.PcpResultOK, Version: "2.0"})
	p.send(pcp.EncodeUpgradeResultAck(pcp.UpgradeResultAck{}))
	checkStats(t, f.d, Stats{Registrations: 2, SegmentsFetched: 2, Executes: 1, Upgrades: 1, Restarts: 1, SHA256: sha(data)})
}

// TestPCPOldVersionUntilReboot: a device that took a 0x17 answers a 0x13
// with its old version until it has installed and rebooted, as one that
// never got the 0x17 does, and refuses a new 0x14 as busy: nothing a
// platform can ask tells a lost 0x17 from one that arrived (why devicefsm
// never sends a second one).
func TestPCPOldVersionUntilReboot(t *testing.T) {
	f := start(t, Config{SwVersion: "1.0", ObjectsPCP: true, Behaviour: Behaviour{RebootOnUpdate: true, UpdateDelay: time.Minute}})
	p := newPlatform(t, f.ts, f.reg)
	data := testPackageData(150)
	p.sendMsg(pcp.NotifyNewVersion{Version: "2.0", SegmentSize: 100, SegmentCount: 2})
	p.expect(pcp.NotifyResponse{Result: messages.PcpResultOK})
	p.serveSegments("2.0", data, 100)
	p.send(pcp.EncodeDownloadResultAck(pcp.DownloadResultAck{}))
	p.send(pcp.EncodeQueryVersion())
	p.expect(pcp.VersionResponse{Result: messages.PcpResultOK, Version: "1.0"})
	p.send(pcp.EncodeExecute())
	p.expect(pcp.ExecuteResponse{Result: messages.PcpResultOK})
	f.clk.Advance(time.Minute / 2)
	p.send(pcp.EncodeQueryVersion())
	p.expect(pcp.VersionResponse{Result: messages.PcpResultOK, Version: "1.0"})
	p.sendMsg(pcp.NotifyNewVersion{Version: "2.0", SegmentSize: 100, SegmentCount: 2})
	p.expect(pcp.NotifyResponse{Result: messages.PcpResultBusy})
	f.clk.Advance(time.Minute / 2)
	waitHook(t, f.events, "restarting")
	f.clk.Advance(f.cfg.Behaviour.RestartDelay)
	p = newPlatform(t, f.ts, f.waitRegister(t))
	p.expect(pcp.UpgradeResult{Result: messages.PcpResultOK, Version: "2.0"})
	p.send(pcp.EncodeUpgradeResultAck(pcp.UpgradeResultAck{}))
	p.send(pcp.EncodeQueryVersion())
	p.expect(pcp.VersionResponse{Result: messages.PcpResultOK, Version: "2.0"})
	checkStats(t, f.d, Stats{Registrations: 2, SegmentsFetched: 2, Executes: 1, Upgrades: 1, Restarts: 1, SHA256: sha(data)})
}

func TestPCPFailures(t *testing.T) {
	data := testPackageData(250)
	for _, tc := range []struct {
		at   messages.PcpCode
		code byte
	}{
		{messages.PcpCodeNotifyNewVersion, messages.PcpResultLowBattery},
		{messages.PcpCodeReportDownloadResult, messages.PcpResultInsufficientStorage},
		{messages.PcpCodeExecuteUpgrade, messages.PcpResultBusy},
		{messages.PcpCodeReportUpgradeResult, messages.PcpResultInstallFailed},
	} {
		t.Run(fmt.Sprintf("%v", tc.at), func(t *testing.T) {
			f := start(t, Config{SwVersion: "1.0", ObjectsPCP: true, Behaviour: Behaviour{PCPFailAt: tc.at, PCPResult: tc.code}})
			p := newPlatform(t, f.ts, f.reg)
			p.sendMsg(pcp.NotifyNewVersion{Version: "2.0", SegmentSize: 100, SegmentCount: 3})
			if tc.at == messages.PcpCodeNotifyNewVersion {
				p.expect(pcp.NotifyResponse{Result: tc.code})
				p.send(pcp.EncodeQueryVersion()) // nothing else came in between
				p.expect(pcp.VersionResponse{Version: "1.0"})
				return
			}
			p.expect(pcp.NotifyResponse{})
			res, _ := p.serveSegments("2.0", data, 100)
			if tc.at == messages.PcpCodeReportDownloadResult {
				if res.Status != tc.code {
					t.Fatalf("download result 0x%02X, want 0x%02X", res.Status, tc.code)
				}
				return
			}
			p.send(pcp.EncodeDownloadResultAck(pcp.DownloadResultAck{}))
			p.send(pcp.EncodeExecute())
			if tc.at == messages.PcpCodeExecuteUpgrade {
				p.expect(pcp.ExecuteResponse{Result: tc.code})
				return
			}
			p.expect(pcp.ExecuteResponse{})
			f.clk.Advance(f.cfg.Behaviour.UpdateDelay)
			p.expect(pcp.UpgradeResult{Result: tc.code, Version: "1.0"})
			if _, sw := f.d.Versions(); sw != "1.0" {
				t.Errorf("sw = %q, want 1.0 kept", sw)
			}
		})
	}
}

func TestPCPSegmentRetry(t *testing.T) {
	f := start(t, Config{SwVersion: "1.0", ObjectsPCP: true, SegmentTimeout: time.Minute})
	p := newPlatform(t, f.ts, f.reg)
	p.sendMsg(pcp.NotifyNewVersion{Version: "2.0", SegmentSize: 100, SegmentCount: 2})
	p.expect(pcp.NotifyResponse{})
	p.expect(pcp.SegmentRequest{Version: "2.0", SegmentNo: 0})
	for range maxSegmentRetries {
		f.clk.Advance(time.Minute)
		p.expect(pcp.SegmentRequest{Version: "2.0", SegmentNo: 0})
	}
	f.clk.Advance(time.Minute)
	p.expect(pcp.DownloadResult{Status: messages.PcpResultDownloadTimeout})
}

// eventLog collects the events a device reports through Config.OnEvent,
// with the device's versions as the callback saw them (the callback reads
// them: it must not run under the device's lock).
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
func startLogged(t *testing.T, cfg Config) (*fixture, *eventLog) {
	t.Helper()
	l := newEventLog()
	cfg.OnEvent = l.onEvent
	f := start(t, cfg)
	l.dev.Store(f.d)
	return f, l
}

// hookSeen reports whether the device event want is among those waiting,
// without waiting.
func hookSeen(ch chan string, want string) bool {
	for {
		select {
		case ev := <-ch:
			if ev == want {
				return true
			}
		default:
			return false
		}
	}
}

// advancePast moves the fake clock by step at a time until it reaches the
// next timer's deadline (the device's pace timer: every other timer of the
// pacing tests is due much later), which then fires.
func (f *fixture) advancePast(t *testing.T, step time.Duration) {
	t.Helper()
	deadline, ok := f.clk.NextDeadline()
	if !ok {
		t.Fatal("no timer armed")
	}
	for f.clk.Now().Before(deadline) {
		f.clk.Advance(step)
	}
}

func TestThinkTimeFOTA(t *testing.T) {
	const think = 30 * time.Second
	f := start(t, Config{FwVersion: "1.0", Behaviour: Behaviour{ThinkTime: think, UpdateDelay: time.Minute}})
	ts, reg := f.ts, f.reg
	uri := ts.addPackage("2.0", testPackageData(3000))
	state := ts.observe(t, reg, "/5/0/3")
	state.untilInt(t, 0)
	// The write is answered at once; the download waits.
	if r := ts.put(t, reg, "/5/0/1", message.TextPlain, []byte(uri)); r.code != codes.Changed {
		t.Fatalf("write /5/0/1: %v", r.code)
	}
	state.untilInt(t, 1)
	waitHook(t, f.events, "thinking")
	f.clk.Advance(think - time.Millisecond)
	if got := ts.blockLog(); len(got) != 0 {
		t.Fatalf("block requests %v before ThinkTime passed", got)
	}
	f.clk.Advance(time.Millisecond)
	state.untilInt(t, 2)
	if got := ts.blockLog(); len(got) != 3 {
		t.Errorf("block requests %v, want 3", got)
	}
	// Execute is answered at once; the installation waits ThinkTime on
	// top of UpdateDelay.
	if r := ts.post(t, reg, "/5/0/2"); r.code != codes.Changed {
		t.Fatalf("execute: %v", r.code)
	}
	state.untilInt(t, 3)
	f.clk.Advance(time.Minute)
	if st, res := f.d.FirmwareState(); st != 3 || res != 0 {
		t.Fatalf("after UpdateDelay alone: state %d result %d, want still 3 and 0", st, res)
	}
	f.clk.Advance(think)
	state.untilInt(t, 0)
	if fw, _ := f.d.Versions(); fw != "2.0" {
		t.Errorf("fw = %q, want 2.0", fw)
	}
}

func TestThinkTimePCP(t *testing.T) {
	const think = 10 * time.Second
	f := start(t, Config{SwVersion: "1.0", ObjectsPCP: true, Behaviour: Behaviour{ThinkTime: think}})
	p := newPlatform(t, f.ts, f.reg)
	data := testPackageData(150)
	p.sendMsg(pcp.NotifyNewVersion{Version: "2.0", SegmentSize: 100, SegmentCount: 2})
	p.expect(pcp.NotifyResponse{Result: messages.PcpResultOK}) // answered at once
	waitHook(t, f.events, "thinking")
	f.clk.Advance(think - time.Millisecond)
	p.send(pcp.EncodeQueryVersion())
	p.expect(pcp.VersionResponse{Version: "1.0"}) // no segment request came before it
	f.clk.Advance(time.Millisecond)
	if res, asked := p.serveSegments("2.0", data, 100); res.Status != messages.PcpResultOK || !reflect.DeepEqual(asked, seq(2)) {
		t.Fatalf("download result 0x%02X, segments %v", res.Status, asked)
	}
	p.send(pcp.EncodeDownloadResultAck(pcp.DownloadResultAck{}))
	p.send(pcp.EncodeExecute())
	p.expect(pcp.ExecuteResponse{Result: messages.PcpResultOK}) // answered at once
	f.clk.Advance(f.cfg.Behaviour.UpdateDelay)
	if _, sw := f.d.Versions(); sw != "1.0" {
		t.Fatalf("sw = %q after UpdateDelay alone, want 1.0 until ThinkTime passed too", sw)
	}
	f.clk.Advance(think)
	p.expect(pcp.UpgradeResult{Result: messages.PcpResultOK, Version: "2.0"})
}

func TestBytesPerSecondFOTA(t *testing.T) {
	const (
		rate  = 2048
		size  = 10 * 1024 // 10 blocks of 1024 bytes: 5 s at rate
		total = 5 * time.Second
		step  = 100 * time.Millisecond
	)
	f, events := startLogged(t, Config{FwVersion: "1.0", Behaviour: Behaviour{BytesPerSecond: rate}})
	ts, reg := f.ts, f.reg
	data := testPackageData(size)
	uri := ts.addPackage("2.0", data)
	start := f.clk.Now()
	if r := ts.put(t, reg, "/5/0/1", message.TextPlain, []byte(uri)); r.code != codes.Changed {
		t.Fatalf("write /5/0/1: %v", r.code)
	}
	events.expect(t, EventCommand, EventDownloadStart)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	for done := false; !done; {
		// The device parks on its pace timer, or completes the download.
		select {
		case ev := <-f.events:
			if ev != "paced" {
				continue
			}
			if st, _ := f.d.FirmwareState(); st != 1 {
				t.Fatalf("state %d while pacing at %v", st, f.clk.Since(start))
			}
			if el := f.clk.Since(start); el >= total {
				t.Fatalf("still downloading after %v, want %v", el, total)
			}
			f.advancePast(t, step)
		case e := <-events.ch:
			if e.Kind != EventDownloadDone || e.Bytes != size {
				t.Fatalf("event %+v, want download-done of %d bytes", e.Event, size)
			}
			done = true
		case <-ctx.Done():
			t.Fatalf("download not done within %v (clock at %v)", waitFor, f.clk.Since(start))
		}
	}
	if el := f.clk.Since(start); el < total-step || el > total+step {
		t.Errorf("download of %d bytes at %d B/s took %v of clock time, want about %v", size, rate, el, total)
	}
	if got := len(ts.blockLog()); got != 10 {
		t.Errorf("%d block requests, want 10", got)
	}
	state := ts.observe(t, reg, "/5/0/3")
	state.untilInt(t, 2)
	checkStats(t, f.d, Stats{Registrations: 1, BlocksFetched: 10, SHA256: sha(data)})
}

func TestBytesPerSecondPCP(t *testing.T) {
	const (
		rate  = 200
		total = 5 * time.Second // 10 segments of 100 bytes at rate
		step  = 100 * time.Millisecond
	)
	f := start(t, Config{SwVersion: "1.0", ObjectsPCP: true, SegmentTimeout: time.Hour, Behaviour: Behaviour{BytesPerSecond: rate}})
	p := newPlatform(t, f.ts, f.reg)
	data := testPackageData(1000)
	p.sendMsg(pcp.NotifyNewVersion{Version: "2.0", SegmentSize: 100, SegmentCount: 10})
	p.expect(pcp.NotifyResponse{Result: messages.PcpResultOK})
	start := f.clk.Now()
	var asked []uint16
	for done := false; !done; {
		switch m := p.recv().(type) {
		case pcp.SegmentRequest:
			asked = append(asked, m.SegmentNo)
			off, n, _ := pcp.SegmentRange(1000, 100, m.SegmentNo)
			p.sendMsg(pcp.SegmentResponse{SegmentNo: m.SegmentNo, Data: data[off : off+int64(n)]})
			// The device handled the segment before it answered the
			// write: it now waits on its pace timer, or it asked for the
			// next segment at once.
			if hookSeen(f.events, "paced") {
				if el := f.clk.Since(start); el >= total {
					t.Fatalf("still downloading after %v, want %v", el, total)
				}
				f.advancePast(t, step)
			}
		case pcp.DownloadResult:
			if m.Status != messages.PcpResultOK {
				t.Fatalf("download result 0x%02X", m.Status)
			}
			done = true
		default:
			t.Fatalf("device sent %#v during the download", m)
		}
	}
	if el := f.clk.Since(start); el < total-step || el > total+step {
		t.Errorf("download of 1000 bytes at %d B/s took %v of clock time, want about %v", rate, el, total)
	}
	if !reflect.DeepEqual(asked, seq(10)) {
		t.Errorf("segments asked %v", asked)
	}
}

func TestBytesPerSecondStop(t *testing.T) {
	f := start(t, Config{FwVersion: "1.0", Behaviour: Behaviour{BytesPerSecond: 1}})
	uri := f.ts.addPackage("2.0", testPackageData(5000))
	f.ts.put(t, f.reg, "/5/0/1", message.TextPlain, []byte(uri))
	waitHook(t, f.events, "paced") // 1024 bytes at 1 B/s: a wait of 17 minutes
	f.d.Stop()                     // must not hang on it
	f.ts.waitEvent(t, "deregister")
}

// needLoopback2 skips a test where 127.0.0.2 cannot be bound (Linux routes
// all of 127/8 to the loopback interface; other systems may not).
func needLoopback2(t *testing.T) {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("cannot bind 127.0.0.2: %v", err)
	}
	c.Close()
}

func TestLocalAddr(t *testing.T) {
	needLoopback2(t)
	f := start(t, Config{FwVersion: "1.0", LocalAddr: "127.0.0.2", Behaviour: Behaviour{StopAfterBlocks: 1, RestartDelay: time.Second}})
	host, _, err := net.SplitHostPort(f.reg.remote)
	if err != nil || host != "127.0.0.2" {
		t.Fatalf("the server saw the registration from %s, want 127.0.0.2", f.reg.remote)
	}
	if got := f.d.LocalAddr(); !strings.HasPrefix(got, "127.0.0.2:") {
		t.Errorf("LocalAddr() = %q, want 127.0.0.2:port", got)
	}
	// The socket of a restart binds to it too.
	uri := f.ts.addPackage("2.0", testPackageData(3000))
	f.ts.put(t, f.reg, "/5/0/1", message.TextPlain, []byte(uri))
	waitHook(t, f.events, "restarting")
	f.clk.Advance(time.Second)
	reg2 := f.waitRegister(t)
	if host, _, _ := net.SplitHostPort(reg2.remote); host != "127.0.0.2" || reg2.remote == f.reg.remote {
		t.Errorf("registration after the restart from %s, want a new socket on 127.0.0.2 (before: %s)", reg2.remote, f.reg.remote)
	}
}

func TestLocalAddrDTLS(t *testing.T) {
	needLoopback2(t)
	psk := []byte("psk-of-dtls-dev")
	ln, err := piondtls.Listen("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, &piondtls.Config{
		PSK:          func([]byte) ([]byte, error) { return psk, nil },
		CipherSuites: []piondtls.CipherSuiteID{piondtls.TLS_PSK_WITH_AES_128_CCM_8},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan error, 1)
	go func() {
		d, err := Start(ctx, Config{Server: ln.Addr().String(), Endpoint: "dtls-dev", PSK: psk, LocalAddr: "127.0.0.2", Clock: clocktest.New(t0)})
		if err == nil {
			d.Stop()
		}
		started <- err
	}()
	type accepted struct {
		c   net.Conn
		err error
	}
	acc := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		acc <- accepted{c, err}
	}()
	wctx, wcancel := context.WithTimeout(context.Background(), waitFor)
	defer wcancel()
	var conn net.Conn
	select {
	case a := <-acc:
		if a.err != nil {
			t.Fatal(a.err)
		}
		conn = a.c
	case <-wctx.Done():
		t.Fatalf("no DTLS connection within %v", waitFor)
	}
	defer conn.Close()
	if ua, ok := conn.RemoteAddr().(*net.UDPAddr); !ok || !ua.IP.Equal(net.IPv4(127, 0, 0, 2)) {
		t.Errorf("the DTLS server saw the device at %v, want 127.0.0.2", conn.RemoteAddr())
	}
	// The registration comes over the handshaken session; it is never
	// answered, and the device gives up when Start's context ends.
	buf := make([]byte, 2048)
	if n, err := conn.Read(buf); err != nil || n == 0 {
		t.Fatalf("reading the registration: %d bytes, %v", n, err)
	}
	cancel()
	if err := <-started; err == nil {
		t.Error("Start succeeded without an answer to the registration")
	}
}

func TestEventsFOTA(t *testing.T) {
	t.Run("success", func(t *testing.T) {
		f, events := startLogged(t, Config{FwVersion: "1.0", NewVersion: func(id string) string { return "v" + id }})
		ts, reg := f.ts, f.reg
		data := testPackageData(2500)
		uri := ts.addPackage("2.0", data)
		state := ts.observe(t, reg, "/5/0/3")
		ts.put(t, reg, "/5/0/1", message.TextPlain, []byte(uri))
		state.untilInt(t, 2)
		got := events.expect(t, EventCommand, EventDownloadStart, EventDownloadDone)
		for _, e := range got {
			if e.Upgrade != "firmware" || e.Package != "2.0" || e.Version != "" || !e.Time.Equal(t0) {
				t.Errorf("event %+v, want firmware package 2.0 (version not yet known) at %v", e.Event, t0)
			}
		}
		if got[2].Bytes != int64(len(data)) {
			t.Errorf("download-done of %d bytes, want %d", got[2].Bytes, len(data))
		}
		ts.post(t, reg, "/5/0/2")
		f.clk.Advance(f.cfg.Behaviour.UpdateDelay)
		got = events.expect(t, EventInstalled, "reported:1")
		for _, e := range got {
			if e.Version != "v2.0" || e.Package != "2.0" || !e.Time.Equal(t0.Add(f.cfg.Behaviour.UpdateDelay)) {
				t.Errorf("event %+v, want version v2.0 of package 2.0 at +UpdateDelay", e.Event)
			}
		}
		if e := got[0]; e.fw != "v2.0" {
			t.Errorf("installed: the device's firmware version %q, want v2.0", e.fw)
		}
		events.none(t)
	})
	t.Run("download fails (5)", func(t *testing.T) {
		f, events := startLogged(t, Config{FwVersion: "1.0", Behaviour: Behaviour{UpdateResult: 5}})
		uri := f.ts.addPackage("2.0", testPackageData(1500))
		f.ts.put(t, f.reg, "/5/0/1", message.TextPlain, []byte(uri))
		events.expect(t, EventCommand, EventDownloadStart, EventDownloadDone, "failed:5", "reported:5")
	})
	t.Run("update fails (8)", func(t *testing.T) {
		f, events := startLogged(t, Config{FwVersion: "1.0", Behaviour: Behaviour{UpdateResult: 8}})
		uri := f.ts.addPackage("2.0", testPackageData(1500))
		f.ts.put(t, f.reg, "/5/0/1", message.TextPlain, []byte(uri))
		events.expect(t, EventCommand, EventDownloadStart, EventDownloadDone)
		f.ts.post(t, f.reg, "/5/0/2")
		f.clk.Advance(f.cfg.Behaviour.UpdateDelay)
		events.expect(t, "failed:8", "reported:8")
	})
	t.Run("refused URI (9)", func(t *testing.T) {
		f, events := startLogged(t, Config{FwVersion: "1.0"})
		f.ts.put(t, f.reg, "/5/0/1", message.TextPlain, []byte("coaps://example.com/fw/3.0"))
		got := events.expect(t, EventCommand, "failed:9", "reported:9")
		if got[0].Package != "3.0" {
			t.Errorf("command for package %q, want 3.0", got[0].Package)
		}
	})
	t.Run("reboot to install", func(t *testing.T) {
		f, events := startLogged(t, Config{FwVersion: "1.0", Behaviour: Behaviour{RebootOnUpdate: true}})
		uri := f.ts.addPackage("2.0", testPackageData(1500))
		state := f.ts.observe(t, f.reg, "/5/0/3")
		f.ts.put(t, f.reg, "/5/0/1", message.TextPlain, []byte(uri))
		state.untilInt(t, 2)
		events.expect(t, EventCommand, EventDownloadStart, EventDownloadDone)
		f.ts.post(t, f.reg, "/5/0/2")
		f.clk.Advance(f.cfg.Behaviour.UpdateDelay)
		events.expect(t, EventInstalled)
		waitHook(t, f.events, "restarting")
		events.none(t) // reported once registered again
		f.clk.Advance(f.cfg.Behaviour.RestartDelay)
		f.waitRegister(t)
		events.expect(t, "reported:1")
	})
}

func TestEventsPCP(t *testing.T) {
	data := testPackageData(250)
	run := func(t *testing.T, b Behaviour) (*fixture, *platform, *eventLog) {
		f, events := startLogged(t, Config{SwVersion: "1.0", ObjectsPCP: true, Behaviour: b})
		p := newPlatform(t, f.ts, f.reg)
		p.sendMsg(pcp.NotifyNewVersion{Version: "2.0", SegmentSize: 100, SegmentCount: 3})
		return f, p, events
	}
	t.Run("success", func(t *testing.T) {
		f, p, events := run(t, Behaviour{})
		p.expect(pcp.NotifyResponse{})
		p.serveSegments("2.0", data, 100)
		got := events.expect(t, EventCommand, EventDownloadStart, EventDownloadDone)
		for _, e := range got {
			if e.Upgrade != "software" || e.Version != "2.0" {
				t.Errorf("event %+v, want software 2.0", e.Event)
			}
		}
		if got[2].Bytes != 250 {
			t.Errorf("download-done of %d bytes, want 250", got[2].Bytes)
		}
		p.send(pcp.EncodeDownloadResultAck(pcp.DownloadResultAck{}))
		p.send(pcp.EncodeExecute())
		p.expect(pcp.ExecuteResponse{})
		f.clk.Advance(f.cfg.Behaviour.UpdateDelay)
		p.expect(pcp.UpgradeResult{Version: "2.0"})
		got = events.expect(t, EventInstalled, EventReported)
		if e := got[0]; e.sw != "2.0" {
			t.Errorf("installed: the device's software version %q, want 2.0", e.sw)
		}
		events.none(t)
	})
	t.Run("refused", func(t *testing.T) {
		_, p, events := run(t, Behaviour{PCPFailAt: messages.PcpCodeNotifyNewVersion, PCPResult: messages.PcpResultLowBattery})
		p.expect(pcp.NotifyResponse{Result: messages.PcpResultLowBattery})
		code := strconv.Itoa(int(messages.PcpResultLowBattery))
		events.expect(t, EventCommand, "failed:"+code, "reported:"+code)
	})
	t.Run("installation fails", func(t *testing.T) {
		f, p, events := run(t, Behaviour{PCPFailAt: messages.PcpCodeReportUpgradeResult, PCPResult: messages.PcpResultInstallFailed})
		p.expect(pcp.NotifyResponse{})
		p.serveSegments("2.0", data, 100)
		p.send(pcp.EncodeDownloadResultAck(pcp.DownloadResultAck{}))
		p.send(pcp.EncodeExecute())
		p.expect(pcp.ExecuteResponse{})
		f.clk.Advance(f.cfg.Behaviour.UpdateDelay)
		p.expect(pcp.UpgradeResult{Result: messages.PcpResultInstallFailed, Version: "1.0"})
		code := strconv.Itoa(int(messages.PcpResultInstallFailed))
		events.expect(t, EventCommand, EventDownloadStart, EventDownloadDone, "failed:"+code, "reported:"+code)
	})
}
