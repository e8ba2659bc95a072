package memtransport

import (
	"container/heap"
	"context"
	"errors"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
)

// item is one scheduled reaction of a device.
type item struct {
	due   time.Time
	seq   uint64
	sess  uint64 // 0: survives session changes; else dropped when the session changed
	fn    func() // runs under device.mu
	timer clock.Timer
	index int
}

type itemHeap []*item

func (h itemHeap) Len() int { return len(h) }
func (h itemHeap) Less(i, j int) bool {
	if !h[i].due.Equal(h[j].due) {
		return h[i].due.Before(h[j].due)
	}
	return h[i].seq < h[j].seq
}
func (h itemHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i]; h[i].index = i; h[j].index = j }
func (h *itemHeap) Push(x any)   { it := x.(*item); it.index = len(*h); *h = append(*h, it) }
func (h *itemHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	it.index = -1
	*h = old[:len(old)-1]
	return it
}

// download is an MQTT or FOTA download in progress, in two halves.
type download struct {
	target  string
	sw      bool
	ordinal int // 1 for the device's first download ever
	half    bool
	active  bool // progressing; false while paused by a lost session
	dropped bool // already interrupted once
	task    string
	attempt uint32
}

type pcpPhase int

const (
	pcpIdle           pcpPhase = iota
	pcpDownloading             // requesting segments
	pcpAwaitDLAck              // 0x16 sent
	pcpDownloaded              // 0x16 acknowledged, waiting for 0x17
	pcpInstalling              // 0x17 accepted
	pcpAwaitResultAck          // 0x18 sent
)

type pcpSession struct {
	phase   pcpPhase
	version string
	count   uint32
	next    uint32
	status  uint32 // of the 0x16
	ordinal int
	dropped bool
}

// device is one simulated device. Locks, outermost first: runMu serializes
// the device's runs and their deliveries (so its uplinks keep their order),
// mu guards its state (held while a durable fact is synced), qmu guards the
// schedule; Send takes only qmu.
type device struct {
	t           *Transport
	id          string
	spec        DeviceSpec
	b           Behaviour
	online      atomic.Bool
	sess        atomic.Uint64
	sendDropped atomic.Int64

	qmu     sync.Mutex
	pending itemHeap
	seq     uint64
	stopped bool

	runMu sync.Mutex

	mu       sync.Mutex
	out      []*messages.DeviceInput
	upgraded []string
	cnt      counts
	fw, sw   string
	awake    bool
	observed map[string]bool
	held     []*messages.Downlink
	drops    int
	refusals int
	psmGen   uint64
	dlGen    uint64
	// install in progress (durable)
	installing   string
	installingSw bool
	// FOTA object 5 and MQTT/FOTA download
	fotaState  int32
	fotaResult int32
	fotaPkg    string
	dl         *download
	// MQTT final report waiting for a session
	mqttPending *messages.MqttProgress
	// PCP
	pcp pcpSession
}

func newDevice(t *Transport, spec DeviceSpec) *device {
	d := &device{t: t, id: spec.ID, spec: spec, b: spec.Behaviour, fw: spec.FwVersion, sw: spec.SwVersion, observed: map[string]bool{}}
	d.sess.Store(1)
	return d
}

// ---- scheduling and runs ----

// after schedules fn on the device's timeline, delay from now. A session
// item is dropped if the device's session changed meanwhile.
func (d *device) after(delay time.Duration, session bool, fn func()) {
	var sess uint64
	if session {
		sess = d.sess.Load()
	}
	d.qmu.Lock()
	defer d.qmu.Unlock()
	if d.stopped {
		return
	}
	d.seq++
	it := &item{due: d.t.clk.Now().Add(delay), seq: d.seq, sess: sess, fn: fn}
	heap.Push(&d.pending, it)
	it.timer = d.t.clk.AfterFunc(delay, func() { d.fire(it) })
}

// fire runs every item due by now (at least up to it), in order.
func (d *device) fire(it *item) {
	d.runMu.Lock()
	d.qmu.Lock()
	limit := d.t.clk.Now()
	if it.due.After(limit) {
		limit = it.due
	}
	var batch []*item
	for d.pending.Len() > 0 && !d.pending[0].due.After(limit) {
		x := heap.Pop(&d.pending).(*item)
		if x != it {
			x.timer.Stop()
		}
		batch = append(batch, x)
	}
	d.qmu.Unlock()
	if len(batch) == 0 {
		d.runMu.Unlock()
		return
	}
	err := d.runLocked(d.t.ctx, func() {
		for _, x := range batch {
			if x.sess == 0 || x.sess == d.sess.Load() {
				x.fn()
			}
		}
	})
	if err != nil && !errors.Is(err, ErrClosed) {
		d.t.log.Debug("uplink not delivered", "device", d.id, "err", err)
	}
}

// run runs fn under the device's locks and delivers the uplinks it emitted.
func (d *device) run(ctx context.Context, fn func()) error {
	d.runMu.Lock()
	return d.runLocked(ctx, fn)
}

// runLocked is run with runMu held; it releases runMu.
func (d *device) runLocked(ctx context.Context, fn func()) error {
	if d.t.isClosed() {
		d.runMu.Unlock()
		return ErrClosed
	}
	d.mu.Lock()
	fn()
	out, ups := d.out, d.upgraded
	d.out, d.upgraded = nil, nil
	d.mu.Unlock()
	errs := make([]error, len(out))
	for i, in := range out {
		errs[i] = d.t.up.Deliver(ctx, d.id, in)
	}
	if len(out) > 0 {
		d.mu.Lock()
		for _, err := range errs {
			d.count(cUplinks)
			if err != nil {
				d.count(cDeliverErrors)
			}
		}
		d.mu.Unlock()
	}
	d.runMu.Unlock()
	if h := d.t.cfg.OnUplink; h != nil {
		for i, in := range out {
			h(d.id, in, errs[i])
		}
	}
	if h := d.t.cfg.OnUpgrade; h != nil {
		for _, v := range ups {
			h(d.id, v)
		}
	}
	d.t.notify()
	return errors.Join(errs...)
}

func (d *device) stopAll() {
	d.qmu.Lock()
	defer d.qmu.Unlock()
	d.stopped = true
	for _, it := range d.pending {
		it.timer.Stop()
	}
	d.pending = nil
}

// busySession reports a reply or download step of the current session still
// scheduled. d.mu is held.
func (d *device) busySession() bool {
	sess := d.sess.Load()
	d.qmu.Lock()
	defer d.qmu.Unlock()
	for _, it := range d.pending {
		if it.sess == sess {
			return true
		}
	}
	return false
}

// ---- state helpers (d.mu held) ----

func (d *device) count(c ctr) {
	d.cnt[c]++
	d.t.bump(c)
}

func (d *device) record() record {
	var mqttDl string
	var mqttSw bool
	if d.spec.Protocol == protoMQTT && d.dl != nil {
		mqttDl, mqttSw = d.dl.target, d.dl.sw
	}
	return record{
		MQTTDownload: mqttDl, MQTTDownloadSw: mqttSw,
		ID: d.id, Fw: d.fw, Sw: d.sw,
		Upgrades: d.cnt[cUpgrades], Executes: d.cnt[cExecutes], PCPExecutes: d.cnt[cPCPExecutes],
		UpgradeEvents: d.cnt[cUpgradeEvents], URIWrites: d.cnt[cURIWrites], Downloads: d.cnt[cDownloads],
		Drops: d.drops, Refusals: d.refusals,
		Installing: d.installing, InstallingSw: d.installingSw,
		FotaResult: d.fotaResult, PCPResultPending: d.pcp.phase == pcpAwaitResultAck,
		PCPDownloaded: d.pcpDownloaded(),
	}
}

// pcpDownloaded is the version of a PCP package downloaded in full (its
// 0x16 OK sent) and not yet installing; "" when none.
func (d *device) pcpDownloaded() string {
	if p := d.pcp; p.phase == pcpDownloaded || (p.phase == pcpAwaitDLAck && p.status == messages.PcpResultOK) {
		return p.version
	}
	return ""
}

func (d *device) restore(r record) {
	d.fw, d.sw = r.Fw, r.Sw
	d.cnt[cUpgrades], d.cnt[cExecutes], d.cnt[cPCPExecutes] = r.Upgrades, r.Executes, r.PCPExecutes
	d.cnt[cUpgradeEvents], d.cnt[cURIWrites], d.cnt[cDownloads] = r.UpgradeEvents, r.URIWrites, r.Downloads
	d.drops, d.refusals = r.Drops, r.Refusals
	d.installing, d.installingSw = r.Installing, r.InstallingSw
	d.fotaResult = r.FotaResult
	if r.PCPResultPending {
		d.pcp.phase = pcpAwaitResultAck
	}
	if r.PCPDownloaded != "" && d.spec.Protocol == protoPCP {
		// The package survived the restart: the device reports it
		// downloaded again once observed, and installs it on a 0x17.
		d.pcp = pcpSession{phase: pcpAwaitDLAck, version: r.PCPDownloaded, status: messages.PcpResultOK}
	}
	if r.MQTTDownload != "" && d.spec.Protocol == protoMQTT {
		d.dl = &download{target: r.MQTTDownload, sw: r.MQTTDownloadSw, ordinal: r.Downloads}
	}
}

// persist appends the device's durable facts to the state file, synced. A
// device acts on a fact only after persist succeeded.
func (d *device) persist() bool {
	if d.t.state == nil {
		return true
	}
	if err := d.t.state.append(d.record()); err != nil {
		d.t.log.Error("state file append failed; the device does not act", "device", d.id, "err", err)
		return false
	}
	return true
}

func (d *device) snapshot() DeviceState {
	d.mu.Lock()
	defer d.mu.Unlock()
	obs := make([]string, 0, len(d.observed))
	for p := range d.observed {
		obs = append(obs, p)
	}
	sort.Strings(obs)
	c := d.cnt.export()
	c.Dropped += int(d.sendDropped.Load())
	return DeviceState{
		ID: d.id, Protocol: d.spec.Protocol, FwVersion: d.fw, SwVersion: d.sw,
		Online: d.online.Load(), Awake: d.awake, QueueMode: d.spec.QueueMode, Observed: obs,
		FotaState: d.fotaState, FotaResult: d.fotaResult, Installing: d.installing, Counters: c,
	}
}

func (d *device) version(sw bool) string {
	if sw {
		return d.sw
	}
	return d.fw
}

// ---- uplinks ----

// emit sends a report now. An offline device's report is lost; an asleep
// queue-mode device wakes to send it.
func (d *device) emit(in *messages.DeviceInput) {
	if !d.online.Load() {
		return
	}
	if d.spec.QueueMode && !d.awake {
		d.awake = true
		d.redispatchHeld()
	}
	d.out = append(d.out, in)
}

// presence delivers a presence input (Connected, Disconnected, Uplink, Asleep).
func (d *device) presence(in *messages.DeviceInput) { d.out = append(d.out, in) }

// reply emits the report built by mk after Delays.Response, in this session;
// mk runs then, so the report shows the state of that moment.
func (d *device) reply(mk func() *messages.DeviceInput) {
	d.after(d.t.delays.Response, true, func() {
		if in := mk(); in != nil {
			d.emit(in)
		}
	})
}

// emitPCP sends a PCP message: it travels as a notification of /19/0/0, so
// it is lost while that path is not observed (the device repeats its
// pending request when it is observed again).
func (d *device) emitPCP(in *messages.DeviceInput) {
	if d.observed[messages.PathPCPUplink] {
		d.emit(in)
	}
}

// notifyFota sends the observed ones of object 5's State and Update Result.
func (d *device) notifyFota() {
	f := &messages.FotaStatus{}
	if d.observed[messages.PathFotaState] {
		f.State = ptr(d.fotaState)
	}
	if d.observed[messages.PathUpdateResult] {
		f.UpdateResult = ptr(d.fotaResult)
	}
	if f.State != nil || f.UpdateResult != nil {
		in := fotaIn(f)
		if early := d.t.cfg.AckEarly; early != nil && early(in) {
			in.NoAck = true
		}
		d.emit(in)
	}
}

// ---- presence ----

func (d *device) connect() {
	d.sess.Add(1)
	d.online.Store(true)
	d.awake = true
	clear(d.observed)
	d.held = nil
	if d.dl != nil {
		d.dl.active = false // the old session's steps are gone
	}
	d.presence(&messages.DeviceInput{Kind: &messages.DeviceInput_Connected{Connected: &messages.Connected{QueueMode: d.spec.QueueMode}}})
	if dl := d.dl; dl != nil && d.spec.Protocol == protoFOTA && d.b.ForgetURIOnReboot {
		// The client kept nothing of the download: object 5 is Idle.
		d.dl = nil
		d.dlGen++
		d.fotaState, d.fotaResult, d.fotaPkg = messages.FotaStateIdle, messages.UpdateResultInitial, ""
	}
	if dl := d.dl; dl != nil {
		// An MQTT device keeps the URL and token of its upgrade event, a
		// FOTA device the URI of /5/0/1, and resumes the download by
		// itself (a real LwM2M client resumes its Block2 download at the
		// next block).
		dl.active = true
		d.after(d.t.delays.Response, true, func() {
			if d.dl == dl {
				d.progress()
			}
		})
	}
	if d.mqttPending != nil {
		d.reply(func() *messages.DeviceInput {
			p := d.mqttPending
			d.mqttPending = nil
			if p == nil {
				return nil
			}
			return mqttIn(p)
		})
	}
	d.startPSM()
}

// goOffline drops the connection; with reconnect the device registers again
// after Delays.Reconnect.
func (d *device) goOffline(reconnect bool) {
	if !d.online.Load() {
		return
	}
	d.sess.Add(1)
	d.online.Store(false)
	d.awake = false
	clear(d.observed)
	d.held = nil
	if d.dl != nil {
		d.dl.active = false
	}
	d.presence(&messages.DeviceInput{Kind: &messages.DeviceInput_Disconnected{Disconnected: &messages.Disconnected{}}})
	if reconnect {
		d.after(d.t.delays.Reconnect, false, func() {
			if !d.online.Load() {
				d.connect()
			}
		})
	}
}

func (d *device) sleep() {
	if !d.online.Load() || !d.awake {
		return
	}
	d.awake = false
	d.presence(&messages.DeviceInput{Kind: &messages.DeviceInput_Asleep{Asleep: &messages.Asleep{}}})
	if p := d.spec.PSM; p != nil {
		d.psmGen++
		gen := d.psmGen
		d.after(p.Asleep, false, func() {
			if gen == d.psmGen && d.online.Load() && !d.awake {
				d.wake()
			}
		})
	}
}

func (d *device) wake() {
	if !d.online.Load() {
		return
	}
	d.awake = true
	// An NB-IoT device leaves PSM with a registration update.
	d.presence(&messages.DeviceInput{Kind: &messages.DeviceInput_Uplink{Uplink: &messages.Uplink{RegistrationUpdate: true}}})
	d.redispatchHeld()
	d.startPSM()
}

func (d *device) redispatchHeld() {
	for _, dl := range d.held {
		d.after(0, true, func() { d.downlink(dl) })
	}
	d.held = nil
}

// startPSM (re)starts the automatic sleep of a PSM device.
func (d *device) startPSM() {
	p := d.spec.PSM
	if p == nil {
		return
	}
	d.psmGen++
	gen := d.psmGen
	var tick func()
	tick = func() {
		if gen != d.psmGen || !d.online.Load() || !d.awake {
			return
		}
		if d.busy() {
			d.after(p.Awake, false, tick)
			return
		}
		d.sleep()
	}
	d.after(p.Awake, false, tick)
}

// busy: a transfer, an install or a reply is in progress.
func (d *device) busy() bool {
	return (d.dl != nil && d.dl.active) || d.installing != "" || d.pcp.phase != pcpIdle ||
		d.fotaState != messages.FotaStateIdle || len(d.held) > 0 || d.busySession()
}

// ---- downlinks ----

func (d *device) downlink(dl *messages.Downlink) {
	if !d.online.Load() {
		d.count(cDropped)
		return
	}
	if d.spec.QueueMode && !d.awake {
		d.held = append(d.held, dl)
		return
	}
	d.count(cDownlinks)
	switch d.spec.Protocol {
	case protoMQTT:
		d.mqttDownlink(dl)
	default:
		d.lwm2mDownlink(dl)
	}
}

func (d *device) revoke(r *messages.RevokeToken) {
	d.count(cRevocations)
	if dl := d.dl; d.spec.Protocol == protoMQTT && dl != nil && dl.task == r.GetTaskId() && dl.attempt == r.GetAttempt() {
		d.dl = nil
		d.dlGen++
		d.emit(mqttIn(&messages.MqttProgress{ResultCode: 6, Version: d.version(dl.sw), Description: "download token revoked"}))
	}
}

// ---- downloads (MQTT, FOTA) ----

// newDownload starts download number cnt[cDownloads]+1; it is persisted by
// the caller before the device acts.
func (d *device) newDownload(target string, sw bool) *download {
	if d.dl != nil {
		d.dlGen++
	}
	d.count(cDownloads)
	d.dl = &download{target: target, sw: sw, ordinal: d.cnt[cDownloads]}
	return d.dl
}

// progress runs the active download's next half.
func (d *device) progress() {
	dl := d.dl
	dl.active = true
	d.dlGen++
	gen := d.dlGen
	d.after(d.t.delays.Download/2, true, func() {
		if d.dl != dl || d.dlGen != gen || !dl.active {
			return
		}
		if dl.half {
			d.downloadDone(dl)
			return
		}
		dl.half = true
		if !dl.dropped && d.drops < d.b.DropMidDownload {
			dl.dropped = true
			d.drops++
			if !d.persist() {
				return
			}
			d.goOffline(!d.b.StayOffline)
			return
		}
		if d.spec.Protocol == protoMQTT {
			d.emit(mqttIn(&messages.MqttProgress{Progress: ptr[int32](50), Version: d.version(dl.sw)}))
		}
		d.progress()
	})
}

func (d *device) downloadDone(dl *download) {
	d.dl = nil
	failing := dl.ordinal <= d.b.FailDownloads
	code := d.b.failCode(d.spec.Protocol)
	switch d.spec.Protocol {
	case protoFOTA:
		if failing {
			d.fotaState, d.fotaResult = messages.FotaStateIdle, code
		} else {
			d.fotaState = messages.FotaStateDownloaded
		}
		d.notifyFota()
	case protoMQTT:
		if failing {
			d.emit(mqttIn(&messages.MqttProgress{ResultCode: code, Version: d.version(dl.sw), Description: "simulated download failure"}))
			return
		}
		d.install(dl.target, dl.sw, nil)
	}
}

// ---- installs ----

// install persists the install of target, then completes it after
// Delays.Install; started runs first (the device's acknowledgement). The
// chain survives a lost session: an install completes offline.
func (d *device) install(target string, sw bool, started func()) bool {
	d.installing, d.installingSw = target, sw
	if !d.persist() {
		d.installing = ""
		return false
	}
	d.after(d.t.delays.Response, false, func() {
		if started != nil {
			started()
		}
		d.after(d.t.delays.Install, false, func() {
			if d.installing != target {
				return
			}
			d.completeInstall()
			d.reportInstall()
		})
	})
	return true
}

// completeInstall changes the version and records the result (persisted).
func (d *device) completeInstall() {
	v := d.installing
	if d.b.WrongVersion != "" {
		v = d.b.WrongVersion
	}
	if d.installingSw {
		d.sw = v
	} else {
		d.fw = v
	}
	d.installing, d.installingSw = "", false
	d.count(cUpgrades)
	switch d.spec.Protocol {
	case protoFOTA:
		d.fotaState, d.fotaResult = messages.FotaStateIdle, messages.UpdateResultSuccess
	case protoPCP:
		d.pcp.phase = pcpAwaitResultAck
	case protoMQTT:
		d.mqttPending = &messages.MqttProgress{Progress: ptr[int32](100), Version: v}
	}
	d.persist() // a failure is logged; the version changed on the device anyway
	d.upgraded = append(d.upgraded, v)
}

// reportInstall tells the engine, or reboots first (Behaviour.RebootOnInstall).
func (d *device) reportInstall() {
	if d.b.RebootOnInstall && d.online.Load() {
		d.goOffline(true)
		return
	}
	switch d.spec.Protocol {
	case protoFOTA:
		d.notifyFota()
	case protoPCP:
		d.emitPCP(pcpIn(&messages.DeviceInput_PcpUpgradeResult{PcpUpgradeResult: &messages.PcpUpgradeResult{Result: messages.PcpResultOK, Version: d.sw}}))
	case protoMQTT:
		if d.online.Load() && d.mqttPending != nil {
			d.emit(mqttIn(d.mqttPending))
			d.mqttPending = nil
		}
	}
}

// ---- MQTT ----

func (d *device) mqttDownlink(dl *messages.Downlink) {
	switch k := dl.Kind.(type) {
	case *messages.Downlink_MqttVersionQuery:
		if d.b.Silent {
			return
		}
		d.reply(func() *messages.DeviceInput {
			v := &messages.VersionReported{FwVersion: ptr(d.fw)}
			if d.sw != "" {
				v.SwVersion = ptr(d.sw)
			}
			return &messages.DeviceInput{Kind: &messages.DeviceInput_VersionReported{VersionReported: v}}
		})
	case *messages.Downlink_MqttUpgrade:
		d.count(cUpgradeEvents)
		if d.b.Silent || d.b.IgnoreUpgrade {
			d.persist()
			return
		}
		job := k.MqttUpgrade.GetJob()
		target := job.GetPackage().GetVersion()
		sw := job.GetTaskType() == messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE
		switch cur := d.version(sw); {
		case d.installing != "":
			d.persist() // the install's report follows
		case cur == target:
			if d.persist() {
				d.reply(func() *messages.DeviceInput {
					return mqttIn(&messages.MqttProgress{Progress: ptr[int32](100), Version: d.version(sw)})
				})
			}
		case d.dl != nil && d.dl.target == target && d.dl.sw == sw:
			// The same upgrade again (a reconnect): a fresh token; continue.
			d.dl.task, d.dl.attempt = job.GetTaskId(), job.GetAttempt()
			if d.persist() && !d.dl.active {
				dl := d.dl
				dl.active = true
				d.after(d.t.delays.Response, true, func() {
					if d.dl == dl {
						d.progress()
					}
				})
			}
		default:
			dl := d.newDownload(target, sw)
			dl.task, dl.attempt = job.GetTaskId(), job.GetAttempt()
			if !d.persist() {
				d.dl = nil
				return
			}
			dl.active = true
			d.after(d.t.delays.Response, true, func() {
				if d.dl != dl {
					return
				}
				d.emit(mqttIn(&messages.MqttProgress{Progress: ptr[int32](0), Version: cur}))
				d.progress()
			})
		}
	default:
		d.t.log.Debug("MQTT device ignores a downlink of another protocol", "device", d.id, "kind", kindName(dl))
	}
}

// ---- LwM2M (FOTA and PCP) ----

func (d *device) lwm2mDownlink(dl *messages.Downlink) {
	switch k := dl.Kind.(type) {
	case *messages.Downlink_Lwm2MRead:
		if !d.b.Silent {
			path, tag := k.Lwm2MRead.GetPath(), k.Lwm2MRead.GetTag()
			d.reply(func() *messages.DeviceInput {
				in := answer(d.read(path))
				in.RequestTag = tag // echoed, as the LwM2M transport does
				return in
			})
		}
	case *messages.Downlink_Lwm2MObserve:
		if !d.b.Silent {
			d.observe(k.Lwm2MObserve.GetPath())
		}
	case *messages.Downlink_Lwm2MCancelObserve:
		delete(d.observed, k.Lwm2MCancelObserve.GetPath())
	case *messages.Downlink_Lwm2MWrite:
		if !d.b.Silent {
			d.write(k.Lwm2MWrite.GetPath(), k.Lwm2MWrite.GetValue())
		}
	case *messages.Downlink_Lwm2MWritePackageUri:
		d.writePackageURI(k.Lwm2MWritePackageUri.GetJob())
	case *messages.Downlink_Lwm2MExecute:
		d.execute(k.Lwm2MExecute.GetPath())
	case *messages.Downlink_PcpQueryVersion, *messages.Downlink_PcpNotifyNewVersion, *messages.Downlink_PcpSegmentResponse,
		*messages.Downlink_PcpDownloadResultAck, *messages.Downlink_PcpExecute, *messages.Downlink_PcpUpgradeResultAck:
		if d.spec.Protocol != protoPCP {
			d.t.log.Debug("FOTA device has no object 19; PCP downlink ignored", "device", d.id, "kind", kindName(dl))
			return
		}
		d.pcpDownlink(dl)
	default:
		d.t.log.Debug("LwM2M device ignores a downlink of another protocol", "device", d.id, "kind", kindName(dl))
	}
}

// answer marks in an answer to the engine's own request (no_ack), as the
// LwM2M transport marks reads, write and execute answers, an observation's
// first value and the PCP answers to 0x13, 0x14 and 0x17: the engine need
// not sync it before going on. nil stays nil.
func answer(in *messages.DeviceInput) *messages.DeviceInput {
	if in != nil {
		in.NoAck = true
	}
	return in
}

func lwm2mResp(op messages.Lwm2MOp, path string, ok bool, code string) *messages.DeviceInput {
	return &messages.DeviceInput{Kind: &messages.DeviceInput_Lwm2MResponse{Lwm2MResponse: &messages.Lwm2MResponse{
		Op: op, Path: path, Success: ok, Code: code,
	}}}
}

// read answers a read of path with the current value.
func (d *device) read(path string) *messages.DeviceInput {
	fota := d.spec.Protocol == protoFOTA
	switch {
	case path == messages.PathFirmwareVersion:
		return &messages.DeviceInput{Kind: &messages.DeviceInput_VersionReported{VersionReported: &messages.VersionReported{FwVersion: ptr(d.fw)}}}
	case path == messages.PathConnMon:
		return radioIn(&messages.RadioReported{Rsrp: d.spec.RSRP, Sinr: d.spec.SINR, CellId: d.spec.CellID})
	case path == messages.PathCellID && d.spec.CellID != "":
		return radioIn(&messages.RadioReported{CellId: d.spec.CellID})
	case path == messages.PathFotaState && fota:
		return fotaIn(&messages.FotaStatus{State: ptr(d.fotaState)})
	case path == messages.PathUpdateResult && fota:
		return fotaIn(&messages.FotaStatus{UpdateResult: ptr(d.fotaResult)})
	case path == messages.PathFotaObject && fota:
		return fotaIn(&messages.FotaStatus{State: ptr(d.fotaState), UpdateResult: ptr(d.fotaResult)})
	}
	return lwm2mResp(messages.Lwm2MOp_LWM2M_OP_READ, path, false, "4.04")
}

// observe starts observing path; the first notification carries the current
// value (for /19/0/0: the device repeats its pending PCP request).
func (d *device) observe(path string) {
	switch {
	case path == messages.PathPCPUplink && d.spec.Protocol == protoPCP:
		d.observed[path] = true
		// Repeat what was pending when the observation arrived, if still pending.
		if was := d.pcp; was.phase != pcpIdle {
			d.after(d.t.delays.Response, true, func() {
				if d.pcp.phase == was.phase && d.pcp.version == was.version && d.pcp.next == was.next {
					d.pcpResume()
				}
			})
		}
	case path == messages.PathFirmwareVersion || path == messages.PathConnMon || path == messages.PathCellID ||
		((path == messages.PathFotaState || path == messages.PathUpdateResult) && d.spec.Protocol == protoFOTA):
		d.observed[path] = true
		d.reply(func() *messages.DeviceInput { return answer(d.read(path)) })
	default:
		d.reply(func() *messages.DeviceInput {
			return answer(lwm2mResp(messages.Lwm2MOp_LWM2M_OP_OBSERVE, path, false, "4.04"))
		})
	}
}

func (d *device) write(path, value string) {
	reset := path == messages.PathPackageURI && value == ""
	d.after(d.t.delays.Response, true, func() {
		in := answer(lwm2mResp(messages.Lwm2MOp_LWM2M_OP_WRITE, path, true, "2.04"))
		in.GetLwm2MResponse().FotaReset = reset
		d.emit(in)
		if reset && d.spec.Protocol == protoFOTA && d.installing == "" {
			// Reset of object 5 (LwM2M 1.1 E.6; a new attempt, a stop): abandon the package.
			if d.dl != nil {
				d.dl = nil
				d.dlGen++
			}
			d.fotaState, d.fotaResult, d.fotaPkg = messages.FotaStateIdle, messages.UpdateResultInitial, ""
			d.notifyFota()
		}
	})
}

func (d *device) writePackageURI(job *messages.Job) {
	if d.spec.Protocol != protoFOTA {
		d.reply(func() *messages.DeviceInput {
			return answer(lwm2mResp(messages.Lwm2MOp_LWM2M_OP_WRITE, messages.PathPackageURI, false, "4.04"))
		})
		return
	}
	d.count(cURIWrites)
	if !d.persist() || d.b.Silent || d.b.IgnoreUpgrade {
		return
	}
	target := job.GetPackage().GetVersion()
	d.after(d.t.delays.Response, true, func() {
		if d.b.StrictURI && (d.fotaState != messages.FotaStateIdle || d.installing != "") {
			// A real client takes a URI in State 0 only (LwM2M 1.1 E.6).
			d.emit(answer(lwm2mResp(messages.Lwm2MOp_LWM2M_OP_WRITE, messages.PathPackageURI, false, "4.00")))
			return
		}
		d.emit(answer(lwm2mResp(messages.Lwm2MOp_LWM2M_OP_WRITE, messages.PathPackageURI, true, "2.04")))
		switch {
		case d.installing != "":
			// Updating: the write changes nothing; State shows 3.
			d.notifyFota()
		case d.fotaState == messages.FotaStateDownloaded && d.fotaPkg == target:
			d.notifyFota() // already downloaded
		case d.dl != nil && d.dl.target == target:
			d.notifyFota() // downloading, or resuming after a lost session
			if !d.dl.active {
				d.progress()
			}
		default:
			d.newDownload(target, false)
			old := d.fotaPkg
			d.fotaPkg, d.fotaState, d.fotaResult = target, messages.FotaStateDownloading, messages.UpdateResultInitial
			if !d.persist() {
				d.dl, d.fotaPkg, d.fotaState = nil, old, messages.FotaStateIdle
				return
			}
			d.notifyFota()
			d.progress()
		}
	})
}

func (d *device) execute(path string) {
	if path != messages.PathUpdate || d.spec.Protocol != protoFOTA {
		if !d.b.Silent {
			d.reply(func() *messages.DeviceInput {
				return answer(lwm2mResp(messages.Lwm2MOp_LWM2M_OP_EXECUTE, path, false, "4.04"))
			})
		}
		return
	}
	d.count(cExecutes)
	refuse := func() {
		d.reply(func() *messages.DeviceInput {
			return answer(lwm2mResp(messages.Lwm2MOp_LWM2M_OP_EXECUTE, path, false, "4.05"))
		})
	}
	switch {
	case d.b.Silent:
		d.persist()
	case d.installing != "":
		d.persist() // already updating
	case d.fotaState != messages.FotaStateDownloaded:
		if d.persist() {
			refuse()
		}
	case d.refusals < d.b.RefuseExecutes:
		d.refusals++
		if d.persist() {
			refuse()
		}
	default:
		// Accepted: State 3 from now on, before the answer goes out (OMA
		// object 5), so that no read ever shows State 2 with Update Result
		// 0 once the device took an Execute.
		d.fotaState = messages.FotaStateUpdating
		if !d.install(d.fotaPkg, false, func() {
			d.emit(answer(lwm2mResp(messages.Lwm2MOp_LWM2M_OP_EXECUTE, path, true, "2.04")))
			d.notifyFota()
		}) {
			d.fotaState = messages.FotaStateDownloaded
		}
	}
}

// ---- PCP (object 19) ----

func pcpIn(k any) *messages.DeviceInput {
	in := &messages.DeviceInput{}
	switch v := k.(type) {
	case *messages.DeviceInput_PcpVersion:
		in.Kind = v
	case *messages.DeviceInput_PcpNotifyResponse:
		in.Kind = v
	case *messages.DeviceInput_PcpSegmentRequest:
		in.Kind = v
	case *messages.DeviceInput_PcpDownloadResult:
		in.Kind = v
	case *messages.DeviceInput_PcpExecuteResponse:
		in.Kind = v
	case *messages.DeviceInput_PcpUpgradeResult:
		in.Kind = v
	}
	return in
}

// replyPCP sends a PCP message after Delays.Response, in this session.
func (d *device) replyPCP(mk func() *messages.DeviceInput) {
	d.after(d.t.delays.Response, true, func() { d.emitPCP(mk()) })
}

func (d *device) pcpDownlink(dl *messages.Downlink) {
	if d.b.Silent {
		switch dl.Kind.(type) {
		case *messages.Downlink_PcpNotifyNewVersion:
			d.count(cPCPNotifies)
		case *messages.Downlink_PcpExecute:
			d.count(cPCPExecutes)
			d.persist()
		}
		return
	}
	switch k := dl.Kind.(type) {
	case *messages.Downlink_PcpQueryVersion:
		d.replyPCP(func() *messages.DeviceInput {
			return answer(pcpIn(&messages.DeviceInput_PcpVersion{PcpVersion: &messages.PcpVersion{Result: messages.PcpResultOK, Version: d.sw}}))
		})
	case *messages.Downlink_PcpNotifyNewVersion:
		d.pcpNotify(k.PcpNotifyNewVersion)
	case *messages.Downlink_PcpSegmentResponse:
		d.pcpSegment(k.PcpSegmentResponse)
	case *messages.Downlink_PcpDownloadResultAck:
		// The device answers the PUT that carried the acknowledgement with
		// 2.04, as the LwM2M transport reports it: the device's 0x17 waits
		// for that answer.
		d.reply(func() *messages.DeviceInput {
			in := answer(lwm2mResp(messages.Lwm2MOp_LWM2M_OP_WRITE, messages.PathPCPDownlink, true, "2.04"))
			in.GetLwm2MResponse().PcpCode = uint32(messages.PcpCodeReportDownloadResult)
			return in
		})
		if d.pcp.phase == pcpAwaitDLAck {
			if k.PcpDownloadResultAck.GetResult() != messages.PcpResultOK || d.pcp.status != messages.PcpResultOK {
				d.pcp = pcpSession{}
			} else {
				d.pcp.phase = pcpDownloaded
			}
		}
	case *messages.Downlink_PcpExecute:
		d.pcpExecute()
	case *messages.Downlink_PcpUpgradeResultAck:
		if d.pcp.phase == pcpAwaitResultAck {
			d.pcp = pcpSession{}
			d.persist()
		}
	}
}

func (d *device) pcpNotify(n *messages.PcpNotifyNewVersion) {
	d.count(cPCPNotifies)
	if d.b.IgnoreUpgrade {
		return
	}
	v := n.GetVersion()
	respond := func(result uint32, then func()) {
		d.after(d.t.delays.Response, true, func() {
			d.emitPCP(answer(pcpIn(&messages.DeviceInput_PcpNotifyResponse{PcpNotifyResponse: &messages.PcpNotifyResponse{Result: result}})))
			if then != nil {
				then()
			}
		})
	}
	p := &d.pcp
	sameOK := p.version == v && (p.phase == pcpDownloading ||
		((p.phase == pcpAwaitDLAck || p.phase == pcpDownloaded) && p.status == messages.PcpResultOK))
	switch {
	case sameOK:
		// The same version again (a reconnect, or a retry after a refused
		// 0x17): carry on, or report the finished download again.
		if p.phase == pcpDownloaded {
			p.phase = pcpAwaitDLAck
		}
		respond(messages.PcpResultOK, d.pcpResume)
	case d.sw == v:
		respond(messages.PcpResultAlreadyLatest, nil)
	case d.installing != "" || p.phase == pcpInstalling || p.phase == pcpAwaitResultAck:
		respond(messages.PcpResultBusy, nil)
	case n.GetSegmentCount() == 0:
		respond(messages.PcpResultUnsupportedPackage, nil)
	default:
		d.count(cDownloads)
		*p = pcpSession{phase: pcpDownloading, version: v, count: n.GetSegmentCount(), ordinal: d.cnt[cDownloads]}
		if !d.persist() {
			*p = pcpSession{}
			return
		}
		respond(messages.PcpResultOK, d.pcpRequest)
	}
}

// pcpRequest asks for the next segment after Delays.Segment, or drops the
// connection halfway (Behaviour.DropMidDownload).
func (d *device) pcpRequest() {
	p := &d.pcp
	if p.phase != pcpDownloading {
		return
	}
	if p.next == p.count/2 && !p.dropped && d.drops < d.b.DropMidDownload {
		p.dropped = true
		d.drops++
		if d.persist() {
			d.goOffline(!d.b.StayOffline)
		}
		return
	}
	version, seg := p.version, p.next
	d.after(d.t.delays.Segment, true, func() {
		if d.pcp.phase == pcpDownloading && d.pcp.version == version && d.pcp.next == seg {
			d.emitPCP(pcpIn(&messages.DeviceInput_PcpSegmentRequest{PcpSegmentRequest: &messages.PcpSegmentRequest{Version: version, SegmentNo: seg}}))
		}
	})
}

func (d *device) pcpSegment(r *messages.PcpSegmentResponse) {
	p := &d.pcp
	if p.phase != pcpDownloading || r.GetSegmentNo() != p.next {
		return // late or duplicate
	}
	if r.GetResult() != messages.PcpResultOK {
		d.t.log.Debug("PCP segment refused; download abandoned", "device", d.id, "segment", r.GetSegmentNo(), "result", r.GetResult())
		*p = pcpSession{}
		return
	}
	d.count(cSegments)
	p.next++
	if p.next < p.count {
		d.pcpRequest()
		return
	}
	p.phase = pcpAwaitDLAck
	if p.ordinal <= d.b.FailDownloads {
		p.status = uint32(d.b.failCode(protoPCP))
	}
	if p.status == messages.PcpResultOK && !d.persist() { // the package is kept (PCPDownloaded)
		*p = pcpSession{}
		return
	}
	d.replyPCP(d.pcpDownloadResult)
}

func (d *device) pcpDownloadResult() *messages.DeviceInput {
	return pcpIn(&messages.DeviceInput_PcpDownloadResult{PcpDownloadResult: &messages.PcpDownloadResult{Status: d.pcp.status}})
}

func (d *device) pcpUpgradeResult() *messages.DeviceInput {
	return pcpIn(&messages.DeviceInput_PcpUpgradeResult{PcpUpgradeResult: &messages.PcpUpgradeResult{Result: messages.PcpResultOK, Version: d.sw}})
}

// pcpResume repeats the device's pending request once /19/0/0 is observed
// (again), as a PCP device retries a request that got no answer.
func (d *device) pcpResume() {
	switch d.pcp.phase {
	case pcpDownloading:
		d.pcpRequest()
	case pcpAwaitDLAck:
		d.emitPCP(d.pcpDownloadResult())
	case pcpAwaitResultAck:
		d.emitPCP(d.pcpUpgradeResult())
	}
}

func (d *device) pcpExecute() {
	d.count(cPCPExecutes)
	p := &d.pcp
	respond := func(result uint32) {
		d.replyPCP(func() *messages.DeviceInput {
			return answer(pcpIn(&messages.DeviceInput_PcpExecuteResponse{PcpExecuteResponse: &messages.PcpExecuteResponse{Result: result}}))
		})
	}
	ready := p.phase == pcpDownloaded || (p.phase == pcpAwaitDLAck && p.status == messages.PcpResultOK)
	switch {
	case p.phase == pcpInstalling:
		if d.persist() {
			respond(messages.PcpResultOK)
		}
	case p.phase == pcpAwaitResultAck:
		if d.persist() {
			respond(messages.PcpResultOK)
			d.replyPCP(d.pcpUpgradeResult)
		}
	case !ready:
		if d.persist() {
			respond(messages.PcpResultInstallFailed)
		}
	case d.refusals < d.b.RefuseExecutes:
		d.refusals++
		if d.persist() {
			respond(d.b.refuseCode())
		}
	default:
		p.phase = pcpInstalling
		if !d.install(p.version, true, func() {
			d.emitPCP(pcpIn(&messages.DeviceInput_PcpExecuteResponse{PcpExecuteResponse: &messages.PcpExecuteResponse{Result: messages.PcpResultOK}}))
		}) {
			p.phase = pcpDownloaded
		}
	}
}

// ---- small helpers ----

func ptr[T any](v T) *T { return &v }

func fotaIn(f *messages.FotaStatus) *messages.DeviceInput {
	return &messages.DeviceInput{Kind: &messages.DeviceInput_FotaStatus{FotaStatus: f}}
}

func mqttIn(p *messages.MqttProgress) *messages.DeviceInput {
	return &messages.DeviceInput{Kind: &messages.DeviceInput_MqttProgress{MqttProgress: p}}
}

func radioIn(r *messages.RadioReported) *messages.DeviceInput {
	return &messages.DeviceInput{Kind: &messages.DeviceInput_RadioReported{RadioReported: r}}
}

func kindName(dl *messages.Downlink) string {
	if dl.Kind == nil {
		return "none"
	}
	return string(dl.ProtoReflect().WhichOneof(dl.ProtoReflect().Descriptor().Oneofs().ByName("kind")).Name())
}
