package mqttsim

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// Event kinds, the Kind of an [Event] (see Config.OnEvent).
const (
	// EventCommand: a firmware_upgrade or software_upgrade event arrived,
	// whatever the device then does with it: carry it out, ignore it (a
	// repeat of the upgrade in progress, NeverAnswer) or answer busy.
	EventCommand = "command"
	// EventDownloadStart: the device starts downloading the package, after
	// ThinkTime (once per upgrade, however many HTTP requests it takes).
	EventDownloadStart = "download-start"
	// EventDownloadDone: the whole package arrived (and, with
	// BytesPerSecond, the pace allows it to be done), before the device
	// verifies it; Bytes is its size.
	EventDownloadDone = "download-done"
	// EventInstalled: the device took on the new version (Version), just
	// before Config.OnUpgrade is called.
	EventInstalled = "installed"
	// EventFailed: the device reports a non-zero result_code, Code: a
	// failed upgrade, or the busy answer (1) to an upgrade event that
	// arrived while another upgrade ran. It comes before the report is
	// published.
	EventFailed = "failed"
	// EventReported: the broker acknowledged the device's final
	// upgrade_progress_report (result_code Code: 0 with progress 100 for a
	// success); not when publishing it failed or the device stopped first.
	EventReported = "reported"
)

// Event is something the device did, for Config.OnEvent.
type Event struct {
	// Kind is one of the Event* constants.
	Kind string
	// Upgrade is "firmware" or "software", after the upgrade event.
	Upgrade string
	// Version is the version the upgrade event brings.
	Version string
	// Bytes: for EventDownloadDone, the bytes downloaded; else 0.
	Bytes int64
	// Code: for EventFailed and EventReported, the result_code reported;
	// else 0.
	Code int
	// Time is the device's Clock when it happened.
	Time time.Time
}

// eventQueue hands a device's events to Config.OnEvent one at a time, in
// the order they were pushed, and never with a lock of the device held:
// whoever pushed calls flush once it holds no device lock. A flush that
// finds another one delivering leaves its events to it.
type eventQueue struct {
	fn func(Event)

	mu         sync.Mutex
	q          []Event
	delivering bool
}

func (e *eventQueue) push(ev Event) {
	e.mu.Lock()
	e.q = append(e.q, ev)
	e.mu.Unlock()
}

func (e *eventQueue) flush() {
	e.mu.Lock()
	if e.delivering {
		e.mu.Unlock()
		return
	}
	e.delivering = true
	for len(e.q) > 0 {
		q := e.q
		e.q = nil
		e.mu.Unlock()
		for _, ev := range q {
			e.fn(ev)
		}
		e.mu.Lock()
	}
	e.delivering = false
	e.mu.Unlock()
}

// event tells Config.OnEvent of an event of job j, stamped with the
// device's clock. The caller holds no lock of the device.
func (d *Device) event(kind string, j *job, bytes int64, code int) {
	if d.ev.fn == nil {
		return
	}
	d.ev.push(Event{Kind: kind, Upgrade: j.kind(), Version: j.p.Version, Bytes: bytes, Code: code, Time: d.clk.Now()})
	d.ev.flush()
}

// pacer keeps a download within Behaviour.BytesPerSecond on the device's
// clock: the bytes counted since start may be in at start + bytes/rate.
type pacer struct {
	rate  int64 // bytes per second; <= 0: unlimited
	start time.Time
	base  int64 // the byte count at start
}

// delay returns how long after now the byte count total is within the
// rate; <= 0 when it is already.
func (p *pacer) delay(now time.Time, total int64) time.Duration {
	n := total - p.base
	if p.rate <= 0 || n <= 0 {
		return 0
	}
	return p.start.Add(bytesDuration(n, p.rate)).Sub(now)
}

// bytesDuration is the time n bytes take at rate bytes per second.
func bytesDuration(n, rate int64) time.Duration {
	return time.Duration(n/rate)*time.Second + time.Duration(n%rate*int64(time.Second)/rate)
}

// localClients are the HTTP clients of devices with a LocalAddr and no
// HTTPClient, one per local IP, shared by its devices (and their idle
// connections).
var localClients struct {
	sync.Mutex
	m map[string]*http.Client
}

// localHTTPClient returns the HTTP client whose connections bind to ip: the
// settings of http.DefaultTransport, dialing from ip.
func localHTTPClient(ip net.IP) *http.Client {
	key := ip.String()
	localClients.Lock()
	defer localClients.Unlock()
	if c := localClients.m[key]; c != nil {
		return c
	}
	var tr *http.Transport
	if dt, ok := http.DefaultTransport.(*http.Transport); ok {
		tr = dt.Clone()
	} else {
		tr = &http.Transport{Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true}
	}
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, LocalAddr: &net.TCPAddr{IP: ip}}
	tr.DialContext = dialer.DialContext
	c := &http.Client{Transport: tr}
	if localClients.m == nil {
		localClients.m = map[string]*http.Client{}
	}
	localClients.m[key] = c
	return c
}
