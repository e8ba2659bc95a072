package mqttsim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport/mqtt/iotda"
)

// waitFor bounds every wait of these tests.
const waitFor = 10 * time.Second

// testBroker is an embedded mochi broker that checks the IoTDA identity and,
// with implicit, subscribes each device to its down topic itself when its
// session is up, as IoTDA does.
type testBroker struct {
	srv      *mqtt.Server
	url      string
	implicit bool

	mu        sync.Mutex
	secrets   map[string]string
	ups       map[string]chan []byte   // device ID → its uplink payloads, in order
	sessions  map[string]chan string   // device ID → client IDs of its sessions, once subscribed
	gone      map[string]chan struct{} // device ID → one value per disconnection
	clientIDs []string
	remotes   map[string][]string // device ID → the remote address of each session

	stopOnce sync.Once
	stopFn   func()
}

// stop closes the broker (once; the test's cleanup does it too).
func (b *testBroker) stop() { b.stopOnce.Do(b.stopFn) }

func newBroker(t *testing.T, implicit bool) *testBroker {
	t.Helper()
	b := &testBroker{
		implicit: implicit,
		secrets:  map[string]string{},
		ups:      map[string]chan []byte{},
		sessions: map[string]chan string{},
		gone:     map[string]chan struct{}{},
		remotes:  map[string][]string{},
	}
	b.srv = mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := b.srv.AddHook(&iotdaHook{b: b}, nil); err != nil {
		t.Fatal(err)
	}
	// The TCP listener binds in AddListener (its Init); from then on its
	// Address reports the bound address, port included.
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := b.srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	b.url = "tcp://" + l.Address()
	if err := b.srv.Serve(); err != nil {
		t.Fatal(err)
	}
	b.stopFn = func() {
		// mochi's Close lists the listener's clients with a nested read
		// lock (Clients.GetByListener calls Len), which deadlocks when a
		// client is added or deleted in between (a device connecting or
		// going away). Closing the listener first, with one read lock,
		// leaves Close nothing to list. The listening socket closes before
		// the clients are disconnected (mochi's own Close disconnects them
		// first), so that none reconnects to a broker on its way out.
		l.Close(func(string) {})
		for _, cl := range b.srv.Clients.GetAll() {
			if cl.Net.Listener == "t" && !cl.Closed() {
				_ = b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
			}
		}
		_ = b.srv.Close()
	}
	t.Cleanup(b.stop)
	err := b.srv.Subscribe(iotda.UpTopic("+"), 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		id, _, ok := iotda.ParseTopic(pk.TopicName)
		if !ok {
			return
		}
		select {
		case b.upCh(id) <- append([]byte(nil), pk.Payload...):
		default: // never block the broker; the test then misses a message and fails
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *testBroker) setSecret(id, secret string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.secrets[id] = secret
}

func (b *testBroker) secret(id string) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.secrets[id]
	return s, ok
}

func (b *testBroker) upCh(id string) chan []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch := b.ups[id]
	if ch == nil {
		ch = make(chan []byte, 256)
		b.ups[id] = ch
	}
	return ch
}

func (b *testBroker) sessionCh(id string) chan string {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch := b.sessions[id]
	if ch == nil {
		ch = make(chan string, 16)
		b.sessions[id] = ch
	}
	return ch
}

func (b *testBroker) goneCh(id string) chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch := b.gone[id]
	if ch == nil {
		ch = make(chan struct{}, 16)
		b.gone[id] = ch
	}
	return ch
}

// publish sends a platform event to a device.
func (b *testBroker) publish(t *testing.T, id string, payload []byte) {
	t.Helper()
	if err := b.srv.Publish(iotda.DownTopic(id), payload, false, 1); err != nil {
		t.Fatal(err)
	}
}

// next returns the device's next uplink, decoded by the platform's decoder.
func (b *testBroker) next(t *testing.T, id string) *messages.DeviceInput {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	select {
	case p := <-b.upCh(id):
		up, err := iotda.DecodeUplink(id, p)
		if err != nil {
			t.Fatalf("device %s published %s: %v", id, p, err)
		}
		if len(up.Inputs) != 1 {
			t.Fatalf("device %s published %s: %d inputs, want 1", id, p, len(up.Inputs))
		}
		return up.Inputs[0]
	case <-ctx.Done():
		t.Fatalf("device %s: no uplink within %v", id, waitFor)
		return nil
	}
}

func (b *testBroker) nextProgress(t *testing.T, id string) *messages.MqttProgress {
	t.Helper()
	in := b.next(t, id)
	p := in.GetMqttProgress()
	if p == nil {
		t.Fatalf("device %s published %v, want an upgrade_progress_report", id, in)
	}
	return p
}

// untilFinal reads the device's progress reports up to a final one (a
// non-zero result_code or progress 100) and returns them all.
func (b *testBroker) untilFinal(t *testing.T, id string) []*messages.MqttProgress {
	t.Helper()
	var out []*messages.MqttProgress
	for {
		p := b.nextProgress(t, id)
		out = append(out, p)
		if p.GetResultCode() != 0 || p.GetProgress() == 100 {
			return out
		}
	}
}

// waitSession waits until the broker established (and, with implicit,
// subscribed) a session of the device; it returns its client ID.
func (b *testBroker) waitSession(t *testing.T, id string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	select {
	case cid := <-b.sessionCh(id):
		return cid
	case <-ctx.Done():
		t.Fatalf("device %s: no session within %v", id, waitFor)
		return ""
	}
}

// remoteAddrs returns the remote addresses of the device's sessions, in
// order.
func (b *testBroker) remoteAddrs(id string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.remotes[id]...)
}

func (b *testBroker) waitGone(t *testing.T, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	select {
	case <-b.goneCh(id):
	case <-ctx.Done():
		t.Fatalf("device %s: not disconnected within %v", id, waitFor)
	}
}

// iotdaHook authenticates devices as IoTDA does (client ID, username,
// HMAC password), confines them to their own topics, and gives them the
// implicit subscription.
type iotdaHook struct {
	mqtt.HookBase
	b *testBroker
}

func (h *iotdaHook) ID() string { return "iotda-test" }

func (h *iotdaHook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnectAuthenticate,
		mqtt.OnACLCheck,
		mqtt.OnSessionEstablished,
		mqtt.OnDisconnect,
	}, []byte{b})
}

func (h *iotdaHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	user := string(pk.Connect.Username)
	c, err := iotda.ParseClientID(pk.Connect.ClientIdentifier)
	if err != nil || c.DeviceID != user || c.SignType != iotda.SignTimestampCheck {
		return false
	}
	secret, ok := h.b.secret(user)
	return ok && iotda.CheckPassword(secret, c.Timestamp, pk.Connect.Password)
}

func (h *iotdaHook) OnACLCheck(cl *mqtt.Client, topic string, _ bool) bool {
	id, _, ok := iotda.ParseTopic(topic)
	return ok && id == string(cl.Properties.Username)
}

// OnSessionEstablished runs after the CONNACK went out and after mochi took
// over (and, clean session, dropped the subscriptions of) any earlier session
// with the same client ID, so a subscription made here stays. Adding it to
// both the topic index and the client's state lets mochi remove it again
// when the clean session ends.
func (h *iotdaHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	id := string(cl.Properties.Username)
	if h.b.implicit {
		sub := packets.Subscription{Filter: iotda.DownTopic(id), Qos: 1}
		h.b.srv.Topics.Subscribe(cl.ID, sub)
		cl.State.Subscriptions.Add(sub.Filter, sub)
	}
	h.b.mu.Lock()
	h.b.clientIDs = append(h.b.clientIDs, cl.ID)
	h.b.remotes[id] = append(h.b.remotes[id], cl.Net.Remote)
	h.b.mu.Unlock()
	select {
	case h.b.sessionCh(id) <- cl.ID:
	default:
	}
}

func (h *iotdaHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	select {
	case h.b.goneCh(string(cl.Properties.Username)) <- struct{}{}:
	default:
	}
}

// fileServer serves a package behind a bearer token, with Range support
// (http.ServeContent).
type fileServer struct {
	*httptest.Server
	pkg   []byte
	token string
	hold  chan struct{} // non-nil: requests wait until it closes
	got   chan struct{} // one value per request

	mu      sync.Mutex
	ranges  []string // the Range header of each request
	remotes []string // the remote address of each request
}

func newFileServer(t *testing.T, size int, token string) *fileServer {
	t.Helper()
	fs := &fileServer{pkg: testPackage(size), token: token, got: make(chan struct{}, 64)}
	fs.Server = httptest.NewServer(http.HandlerFunc(fs.serve))
	t.Cleanup(fs.Close)
	return fs
}

func (fs *fileServer) serve(w http.ResponseWriter, r *http.Request) {
	fs.mu.Lock()
	fs.ranges = append(fs.ranges, r.Header.Get("Range"))
	fs.remotes = append(fs.remotes, r.RemoteAddr)
	fs.mu.Unlock()
	select {
	case fs.got <- struct{}{}:
	default:
	}
	if r.Header.Get("Authorization") != "Bearer "+fs.token {
		http.Error(w, "bad token", http.StatusUnauthorized)
		return
	}
	if fs.hold != nil {
		select {
		case <-fs.hold:
		case <-r.Context().Done():
			return
		}
	}
	w.Header().Set("Content-Disposition", `attachment; filename="fw.bin"`)
	http.ServeContent(w, r, "fw.bin", time.Time{}, bytes.NewReader(fs.pkg))
}

func (fs *fileServer) requests() []string {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return append([]string(nil), fs.ranges...)
}

func (fs *fileServer) remoteAddrs() []string {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return append([]string(nil), fs.remotes...)
}

func (fs *fileServer) waitRequest(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	select {
	case <-fs.got:
	case <-ctx.Done():
		t.Fatalf("no download request within %v", waitFor)
	}
}

// testPackage is a deterministic package of size bytes.
func testPackage(size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i*7 + i>>8 + i>>16)
	}
	return b
}

// upgradeParas are the paras of an upgrade event for fs's package.
func (fs *fileServer) upgradeParas(version string) iotda.UpgradeParas {
	sum := sha256Hex(fs.pkg)
	return iotda.UpgradeParas{
		Version:     version,
		URL:         fs.URL + "/iodm/inner/v1.3.0/firmwarefiles/" + version,
		FileSize:    int64(len(fs.pkg)),
		FileName:    "fw.bin",
		AccessToken: fs.token,
		Expires:     86400,
		Sign:        sum,
	}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
