package lwm2m

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	piondtls "github.com/pion/dtls/v3"
	"github.com/plgd-dev/go-coap/v3/dtls"
	dtlsserver "github.com/plgd-dev/go-coap/v3/dtls/server"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	coapnet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"
	udpClient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/internal/stacks"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/transport"
	"github.com/otafleet/otafleet/transport/coapudp"
	"github.com/otafleet/otafleet/transport/download"
	"github.com/otafleet/otafleet/transport/pcp"
)

// Devices tells registered devices, their products and their PSKs;
// persistence.Registry satisfies it.
type Devices interface {
	DeviceCredentials(ctx context.Context, id string) (persistence.Credentials, error)
	GetDevice(ctx context.Context, id string) (persistence.Device, error)
	GetProduct(ctx context.Context, id string) (persistence.Product, error)
}

// Packages reads package files; persistence.Registry satisfies it.
type Packages interface {
	GetPackage(ctx context.Context, id string) (persistence.Package, error)
	OpenBlob(ctx context.Context, id string) (persistence.Blob, error)
}

// Tokens makes the download handles of package URIs and checks them (and
// any other download token); *download.Server satisfies it.
type Tokens interface {
	Handle(ctx context.Context, g download.Grant) (string, error)
	Check(ctx context.Context, token, packageID string) (download.Grant, error)
	Served(g download.Grant, offset, n, size int64)
}

// Config configures the server.
type Config struct {
	// Addr is the UDP address ("127.0.0.1:5683"; port 0 picks one); ""
	// serves no plain CoAP.
	Addr string
	// SocketBuffer is the receive and send buffer of the UDP socket, in
	// bytes: 0 means DefaultSocketBuffer (4 MiB), a negative value leaves
	// the system's default. The kernel caps it at net.core.rmem_max and
	// wmem_max; raise those for large fleets (see the README).
	SocketBuffer int
	// DTLSAddr is the DTLS 1.2 address with pre-shared keys ("127.0.0.1:5684");
	// "" serves no DTLS. A device's PSK identity is its device ID; a device
	// that has a PSK registers only over DTLS, as itself (see admit).
	DTLSAddr string
	// PublicAddr is the host:port written into coap:// package URIs (for
	// devices registered over plain CoAP); default: the listener's address.
	PublicAddr string
	// DTLSPublicAddr is the host:port written into coaps:// package URIs
	// (for devices registered over DTLS); default: the DTLS listener's
	// address.
	DTLSPublicAddr string
	// Devices, Packages, Tokens and Uplinks are required.
	Devices  Devices
	Packages Packages
	Tokens   Tokens
	Uplinks  transport.Uplinks
	// Presence, when set, counts the registered devices (the fleet
	// summary): Up when a device registers (or its kept registration is
	// restored), Down when its registration is dropped (de-registered,
	// expired); a re-registration keeps it up.
	Presence *transport.Presence
	// Images serves the package files of Block2 downloads and PCP
	// segments from memory (share the download server's: serve's
	// --package-cache-bytes bounds them all); nil:
	// download.NewImages(Packages, download.DefaultImageBytes), the
	// server's own.
	Images *download.Images
	// QueueAwake is how long a queue-mode device (b=UQ) stays reachable
	// after each message it sends; default 93 s (the LwM2M 1.1 default of
	// the client's awake time).
	QueueAwake time.Duration
	// PeerIdle is how long a DTLS session that is not a registered
	// device's (a request without registering, a stale address) may stay
	// silent before it is closed; 0 means 16 s. Registered devices stay
	// reachable for their whole lifetime however long they are silent.
	// Plain CoAP keeps no per-peer conversation to close.
	PeerIdle time.Duration
	// RequestTimeout bounds one request to a device, retransmissions
	// included; default 2 minutes.
	RequestTimeout time.Duration
	// HandshakeTimeout bounds a DTLS handshake; default 30 s. A client
	// with a wrong PSK is told nothing (DTLS drops what it cannot
	// decrypt): its handshake fails, and is logged, when this passes.
	HandshakeTimeout time.Duration
	// Sessions, when set, keeps plain-CoAP registrations across restarts
	// (see restore); nil keeps them in memory only, and after a restart
	// each device is reachable again only once it registers anew (at its
	// next registration update, which the server answers 4.04).
	Sessions persistence.Sessions
	// Node names this server's node in a cluster (its advertised address,
	// clusterconfig.Config.Node); "" for a node alone. The registrations
	// it keeps in Sessions are held by Node (persistence.NodeSessions):
	// it restores only its own, and those of a node that is gone are
	// dropped, not restored here. With Sessions, a Node needs a store
	// that keeps the nodes apart (a shared PostgreSQL store); New fails
	// otherwise.
	Node   string
	Clock  clock.Clock  // nil: clock.Real()
	Logger *slog.Logger // nil: discard
}

// Server is the LwM2M server. It implements transport.Downlinks for LwM2M
// and PCP downlinks.
type Server struct {
	cfg Config
	log *slog.Logger
	// onStrayClosed (tests) is told of each silent stray conversation closed.
	onStrayClosed func(peer string)
	udp           *coapudp.Server // plain CoAP
	addr          string
	dtlsSrv       *dtlsserver.Server
	dtlsLis       *handshakeListener
	dtlsAddr      string
	serving       sync.WaitGroup
	// cleanups are the registrations replaced by a new one being dropped
	// (register); Close waits for them.
	cleanups sync.WaitGroup

	// Exchanges counts the CoAP exchanges: requests from devices,
	// requests to devices and notifications received.
	exchanges atomic.Uint64

	// restored are the registrations read back from Sessions by New;
	// Start gives them their timers and workers.
	restored []*registration

	mu     sync.Mutex
	byID   map[string]*registration     // registration ID → registration
	byDev  map[string]*registration     // device ID → its registration
	byPeer map[string]*registration     // remote address → registration
	dl     map[download.Grant]servedRun // bytes served and not yet reported, per download

	bodies *bodies // block-wise registration bodies in flight
}

var _ transport.Downlinks = (*Server)(nil)

// registration is one registered device.
type registration struct {
	id, device string
	conn       conv // the device's conversation (see connOf)
	peer       string
	secure     bool // over DTLS: not kept in Sessions (its session dies with the process)
	lifetime   time.Duration
	// queue is the binding's queue mode (UQ); an update changes it, on
	// another reader than the one that reads it for a notification.
	queue  atomic.Bool
	expiry clock.Timer
	asleep clock.Timer
	// life ends (end) when the registration is dropped: requests to the
	// device derive their contexts from it.
	life context.Context
	end  context.CancelFunc

	mu   sync.Mutex
	obs  map[string]*observation // path → observation
	gone bool
	// While a write or execute on object 5 waits for its answer, object 5
	// notifications are held (hold) and delivered after the answer: the
	// device machine reads them in the order the device meant them, even
	// when a notification arrives before the response.
	hold bool
	held []func()
	// work are the deliveries to the engine of what the device sent
	// (notifications, registration updates), run one at a time, in order,
	// by a goroutine that exists only while there are some (working): a
	// reader of the socket never waits for the journal.
	work    []func()
	working bool
	// inflight is the request the worker waits on, mids the Message ID of
	// the last request (exchange.go).
	inflight *inflight
	mids     atomic.Uint32
	// pending are the downlinks Send queued, run one at a time, in order,
	// by a goroutine that exists only while there are some (draining): an
	// idle registration holds no goroutine and no buffer. ready is set once
	// the registration has a conversation to send on (a restored one only
	// after Start).
	pending  []*messages.Downlink
	draining bool
	ready    bool
}

// maxPending bounds a registration's queued downlinks; Send drops more.
const maxPending = 256

// New opens the UDP listener; Start serves it.
func New(cfg Config) (*Server, error) {
	if cfg.Devices == nil || cfg.Packages == nil || cfg.Tokens == nil || cfg.Uplinks == nil {
		return nil, errors.New("lwm2m: Config needs Devices, Packages, Tokens and Uplinks")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Images == nil {
		cfg.Images = download.NewImages(cfg.Packages, download.DefaultImageBytes)
	}
	if cfg.PeerIdle <= 0 {
		cfg.PeerIdle = defaultPeerIdle
	}
	if cfg.QueueAwake <= 0 {
		cfg.QueueAwake = 93 * time.Second
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 2 * time.Minute
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 30 * time.Second
	}
	if cfg.Addr == "" && cfg.DTLSAddr == "" {
		return nil, errors.New("lwm2m: Config needs Addr or DTLSAddr")
	}
	if cfg.Sessions != nil {
		own, err := persistence.SessionsOf(cfg.Sessions, cfg.Node)
		if err != nil {
			return nil, fmt.Errorf("lwm2m: the registrations of node %q: %w", cfg.Node, err)
		}
		cfg.Sessions = own
	}
	s := &Server{
		cfg: cfg, log: cfg.Logger.With("component", "lwm2m"),
		byID: map[string]*registration{}, byDev: map[string]*registration{}, byPeer: map[string]*registration{},
		dl: map[download.Grant]servedRun{}, bodies: newBodies(),
	}
	router := mux.NewRouter()
	router.DefaultHandleFunc(s.handleDTLS)
	onErr := func(err error) { s.log.Debug("lwm2m: coap", "error", err) }
	if cfg.Addr != "" {
		lis, err := listenUDP(cfg.Addr, cfg.SocketBuffer)
		if err != nil {
			return nil, fmt.Errorf("lwm2m: listening on %s: %w", cfg.Addr, err)
		}
		s.udp, err = coapudp.New(lis, coapudp.Config{
			Handler: s.handleUDP, Unmatched: s.strayPCP, Clock: cfg.Clock, Logger: s.log,
			// A reader that answers a download's first block asks the
			// device's actor to authorize it: more readers than cores keep
			// the socket read meanwhile.
			Readers: max(4, 2*runtime.GOMAXPROCS(0)),
		})
		if err != nil {
			lis.Close()
			return nil, fmt.Errorf("lwm2m: %w", err)
		}
		s.addr = lis.LocalAddr().String()
	}
	if cfg.DTLSAddr != "" {
		dcfg := &piondtls.Config{
			PSK:             s.psk,
			PSKIdentityHint: []byte("otafleet"),
			CipherSuites:    dtlsSuites,
		}
		lis, err := coapnet.NewDTLSListener("udp", cfg.DTLSAddr, dcfg)
		if err != nil {
			if s.udp != nil {
				s.udp.Close()
			}
			return nil, fmt.Errorf("lwm2m: listening on %s (DTLS): %w", cfg.DTLSAddr, err)
		}
		s.dtlsLis, s.dtlsAddr = &handshakeListener{lis, &handshakeFailures{log: s.log, clk: cfg.Clock}}, lis.Addr().String()
		s.dtlsSrv = dtls.NewServer(options.WithMux(router), options.WithBlockwise(false, blockwise.SZX1024, time.Minute), options.WithErrors(onErr),
			options.WithInactivityMonitor(cfg.PeerIdle, s.closeIfStray), options.WithDTLSHandshakeTimeout(cfg.HandshakeTimeout))
	}
	if s.cfg.PublicAddr == "" {
		s.cfg.PublicAddr = s.addr
	}
	if s.cfg.DTLSPublicAddr == "" {
		s.cfg.DTLSPublicAddr = s.dtlsAddr
	}
	if err := s.restore(context.Background()); err != nil {
		if s.udp != nil {
			_ = s.udp.Close()
		}
		if s.dtlsLis != nil {
			_ = s.dtlsLis.Close()
		}
		return nil, err
	}
	return s, nil
}

// psk returns the pre-shared key of the device whose ID is the identity a
// DTLS client presents; an unknown device or one without a PSK fails the
// handshake (logged, rate-limited, by handshakeFailures).
func (s *Server) psk(identity []byte) ([]byte, error) {
	id := string(identity)
	creds, err := s.cfg.Devices.DeviceCredentials(context.Background(), id)
	if err != nil {
		s.log.Debug("lwm2m: DTLS handshake refused", "identity", id, "reason", err.Error())
		return nil, fmt.Errorf("unknown PSK identity %q", id)
	}
	if len(creds.PSK) == 0 {
		s.log.Debug("lwm2m: DTLS handshake refused", "identity", id, "reason", "the device has no PSK")
		return nil, fmt.Errorf("device %q has no PSK", id)
	}
	return creds.PSK, nil
}

// pskIdentity is the PSK identity of a DTLS peer; false for plain CoAP.
func pskIdentity(c mux.Conn) (string, bool) {
	st, ok := c.NetConn().(interface {
		ConnectionState() (piondtls.State, bool)
	})
	if !ok {
		return "", false
	}
	state, ok := st.ConnectionState()
	if !ok {
		return "", false
	}
	return string(state.IdentityHint), true
}

// Addr is the plain CoAP address the server listens on ("" without one).
func (s *Server) Addr() string { return s.addr }

// DTLSAddr is the DTLS address the server listens on ("" without one).
func (s *Server) DTLSAddr() string { return s.dtlsAddr }

// Start serves in the background, then makes the restored registrations
// reachable.
func (s *Server) Start() {
	if s.udp != nil {
		s.udp.Start()
		s.resume()
	}
	if s.dtlsSrv != nil {
		s.serving.Add(1)
		go func() {
			defer s.serving.Done()
			if err := s.dtlsSrv.Serve(s.dtlsLis); err != nil {
				s.log.Error("lwm2m: DTLS server stopped", "error", err)
			}
		}()
	}
}

// Close stops serving; registered devices are forgotten (not reported
// offline: the engine's next start meets them re-registering).
func (s *Server) Close() error {
	var err error
	if s.udp != nil {
		err = s.udp.Close()
	}
	if s.dtlsSrv != nil {
		s.dtlsSrv.Stop()
		err = errors.Join(err, s.dtlsLis.Close())
	}
	s.serving.Wait()
	s.mu.Lock()
	regs := make([]*registration, 0, len(s.byID))
	for _, r := range s.byID {
		regs = append(regs, r)
	}
	s.mu.Unlock()
	for _, r := range regs {
		s.drop(r, false)
	}
	s.cleanups.Wait()
	return err
}

// Exchanges is the number of CoAP exchanges so far: requests from devices,
// requests to devices and notifications received.
func (s *Server) Exchanges() uint64 { return s.exchanges.Load() }

// handleUDP serves a plain-CoAP request (coapudp routes answers and
// notifications to the requests and observations they belong to, and what
// matches none to strayPCP).
func (s *Server) handleUDP(w *coapudp.ResponseWriter, r *coapudp.Request) {
	rq := request{conv: udpConv{s.udp, r.Peer}, msg: r.Msg, ctx: context.Background(), udp: w}
	s.serve(&rq)
}

// handleDTLS serves what a DTLS session sends that go-coap does not match
// to a request of the server. A response that reaches it matched no
// pending request (a late answer, a notification of a cancelled
// observation): it is dropped unanswered, since answering a response with
// a response would start a ping-pong with the device; a confirmable one is
// acknowledged (go-coap).
func (s *Server) handleDTLS(w mux.ResponseWriter, r *mux.Message) {
	if r.Code() > 31 { // not a request method (0.01-0.31)
		if !s.staleAnswer(w, r) {
			s.log.Debug("lwm2m: stray response dropped", "peer", w.Conn().RemoteAddr().String(), "code", r.Code().String())
		}
		return
	}
	m := message.Message{Code: r.Code(), Token: r.Token(), Options: r.Options(), Type: r.Type(), MessageID: r.MessageID()}
	if r.Body() != nil {
		// At most one byte beyond what a request may carry: requestBody
		// refuses a longer one.
		b, err := io.ReadAll(io.LimitReader(r.Body(), maxRegistrationBody+1))
		if err != nil {
			s.answerDTLS(w, codes.BadRequest, "body: "+err.Error())
			return
		}
		m.Payload = b
	}
	rq := request{conv: dtlsConv{w.Conn()}, msg: &m, ctx: r.Context(), dtls: w}
	s.serve(&rq)
}

func (s *Server) answerDTLS(w mux.ResponseWriter, c codes.Code, text string) {
	if err := w.SetResponse(c, message.TextPlain, strings.NewReader(text)); err != nil {
		s.log.Debug("lwm2m: answering", "error", err)
	}
}

// serve dispatches the requests devices send.
func (s *Server) serve(rq *request) {
	s.exchanges.Add(1)
	path, _ := rq.msg.Options.Path()
	path = strings.Trim(path, "/")
	code := rq.msg.Code
	switch {
	case path == "rd" && code == codes.POST:
		if body, ack, ok := s.requestBody(rq, path); ok {
			s.register(rq, body, ack)
		}
	case strings.HasPrefix(path, "rd/") && code == codes.POST:
		if body, ack, ok := s.requestBody(rq, path); ok {
			s.update(rq, strings.TrimPrefix(path, "rd/"), body, ack)
		}
	case strings.HasPrefix(path, "rd/") && code == codes.DELETE:
		s.deregister(rq, strings.TrimPrefix(path, "rd/"))
	case strings.HasPrefix(path, packageRoot+"/") && code == codes.GET:
		s.servePackage(rq, path)
	default:
		s.answer(rq, codes.NotFound, "")
	}
}

// strayPCP (coapudp's Config.Unmatched) delivers a PCP frame that a
// registered device notified on an observation of /19/0/0 the server no
// longer knows: one made by the process before a restart, until the device
// machine's Resume observes /19/0/0 again. A segment request (0x15),
// download result (0x16) or upgrade result (0x18) sent then would otherwise
// be lost, and the device left waiting: it repeats a segment request only a
// few times before it gives up on the download. Only a notification
// (Observe option) whose payload is a PCP frame counts, which is found
// nowhere but on /19/0/0 (spec 4.7), and only from the address of a device
// registered over plain CoAP. It reports whether it delivered one (a
// confirmable one is then acknowledged, once the report is journaled:
// this runs in a reader, but only in the minutes after a restart).
func (s *Server) strayPCP(peer netip.AddrPort, m *message.Message) bool {
	if m.Code != codes.Content || !m.Options.HasOption(message.Observe) || !pcp.IsPCP(m.Payload) {
		return false
	}
	s.mu.Lock()
	reg := s.byPeer[peer.String()]
	ok := reg != nil && reg.conn == conv(udpConv{s.udp, peer})
	s.mu.Unlock()
	if !ok {
		return false
	}
	s.exchanges.Add(1)
	s.log.Debug("lwm2m: PCP frame on an observation of an earlier process delivered", "device", reg.device)
	s.awake(reg)
	s.pcpUplink(reg, bytes.Clone(m.Payload), m.Type != message.Confirmable)
	return true
}

// answer answers rq with code and a text payload (none when text is "").
func (s *Server) answer(rq *request, c codes.Code, text string, opts ...message.Option) {
	replyText(rq.answer, c, text, opts...)
}

// replyText is answer for a deferred reply.
func replyText(reply replyFunc, c codes.Code, text string, opts ...message.Option) {
	var body []byte
	if text != "" {
		body = []byte(text)
	}
	reply(c, message.TextPlain, body, opts...)
}

// queries parses the URI-Query options into a map; a repeated key is an
// error.
func queries(m *message.Message) (map[string]string, error) {
	qs, err := m.Options.Queries()
	if err != nil && !errors.Is(err, message.ErrOptionNotFound) {
		return nil, err
	}
	return parseQueries(qs)
}

// parseQueries maps key=value query strings; a repeated key is an error.
func parseQueries(qs []string) (map[string]string, error) {
	out := map[string]string{}
	for _, q := range qs {
		k, v, _ := strings.Cut(q, "=")
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("query %q given twice", k)
		}
		out[k] = v
	}
	return out, nil
}

func newRegID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// regParams are what a registration (POST /rd) or an update (POST /rd/{id})
// says of the registration: the endpoint (a registration's only), the
// lifetime and the binding. What the request leaves out is unset (0, "")
// until withDefaults fills it.
type regParams struct {
	endpoint string
	lifetime time.Duration
	binding  string // "U" or "UQ" (queue mode)
}

// defaultLifetime is the lifetime of a registration that gives no lt (OMA
// LwM2M 1.1 core 6.2.1.1).
const defaultLifetime = 86400 * time.Second

// registrationDefaults are what a registration leaves out takes: lt 86400 s,
// binding U.
func registrationDefaults() regParams {
	return regParams{lifetime: defaultLifetime, binding: "U"}
}

// paramsOf are reg's lifetime and binding: what an update leaves out keeps.
func paramsOf(reg *registration) regParams {
	p := regParams{endpoint: reg.device, lifetime: reg.lifetime, binding: "U"}
	if reg.queue.Load() {
		p.binding = "UQ"
	}
	return p
}

// withDefaults fills what p leaves out from d: for a registration
// registrationDefaults, for an update the registration's own (paramsOf).
func (p regParams) withDefaults(d regParams) regParams {
	if p.endpoint == "" {
		p.endpoint = d.endpoint
	}
	if p.lifetime == 0 {
		p.lifetime = d.lifetime
	}
	if p.binding == "" {
		p.binding = d.binding
	}
	return p
}

// queue tells whether the binding is queue mode (UQ).
func (p regParams) queue() bool { return p.binding == "UQ" }

// parseParams parses what a registration and an update both may carry: lt
// (seconds, at least 1), b (U, or UQ; an empty b is U; other bindings are
// refused) and a link-format body. Other queries are ignored.
func parseParams(q map[string]string, body []byte) (regParams, error) {
	var p regParams
	if v, ok := q["lt"]; ok {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n == 0 {
			return p, fmt.Errorf("lt=%q: want seconds, at least 1", v)
		}
		p.lifetime = time.Duration(n) * time.Second
	}
	if b, ok := q["b"]; ok {
		switch b {
		case "", "U":
			p.binding = "U"
		case "UQ":
			p.binding = "UQ"
		default:
			return p, fmt.Errorf("binding %q: this server speaks U and UQ", b)
		}
	}
	if err := checkLinks(body); err != nil {
		return p, err
	}
	return p, nil
}

// parseRegistration checks a registration's query and link-format body
// (OMA LwM2M 1.1 core 6.2.1): ep is required; lt, lwm2m and b are checked
// when present; other query parameters are accepted and ignored. What it
// leaves out takes registrationDefaults.
func parseRegistration(qs []string, body []byte) (regParams, error) {
	q, err := parseQueries(qs)
	if err != nil {
		return regParams{}, err
	}
	ep := q["ep"]
	if ep == "" {
		return regParams{}, errors.New("no endpoint name (ep)")
	}
	if v := q["lwm2m"]; v != "" && v != "1.0" && v != "1.1" && v != "1.2" {
		return regParams{}, fmt.Errorf("lwm2m=%q: this server speaks 1.0, 1.1 and 1.2", v)
	}
	p, err := parseParams(q, body)
	if err != nil {
		return regParams{}, err
	}
	p.endpoint = ep
	return p.withDefaults(registrationDefaults()), nil
}

// register handles POST /rd with its (reassembled) body; ack are the
// options of its success answer (the last Block1 of a block-wise body). It
// parses the request (parseRegistration), then, aside from the reader on
// plain CoAP (it reads the registry and writes Sessions), authorizes the
// device (authorize), records the registration (record), answers and
// tells the device's actor.
func (s *Server) register(rq *request, body []byte, ack []message.Option) {
	qs, err := rq.msg.Options.Queries()
	if err != nil && !errors.Is(err, message.ErrOptionNotFound) {
		s.refuseRegistration(rq, err.Error())
		return
	}
	p, err := parseRegistration(qs, body)
	if err != nil {
		s.refuseRegistration(rq, err.Error())
		return
	}
	c, ctx := rq.conv, rq.ctx
	reply, async := rq.later()
	if !async {
		s.admitRegistration(ctx, c, reply, p, ack)
		return
	}
	s.cleanups.Add(1)
	go func() {
		defer s.cleanups.Done()
		s.admitRegistration(ctx, c, reply, p, ack)
	}()
}

// admitRegistration authorizes and records registration p on conversation
// c and answers it with reply.
func (s *Server) admitRegistration(ctx context.Context, c conv, reply replyFunc, p regParams, ack []message.Option) {
	secure, product, refused, err := s.authorize(ctx, c, p.endpoint)
	switch {
	case err != nil:
		s.log.Error("lwm2m: registration: looking the device up", "endpoint", p.endpoint, "error", err)
		replyText(reply, codes.ServiceUnavailable, "")
		return
	case refused != "":
		s.log.Info("lwm2m: registration refused", "endpoint", p.endpoint, "reason", refused)
		replyText(reply, codes.Forbidden, refused)
		return
	}
	reg, old := s.record(ctx, c, p, secure, product)
	replyText(reply, codes.Created, "", append(ack, message.Option{ID: message.LocationPath, Value: []byte("rd")},
		message.Option{ID: message.LocationPath, Value: []byte(reg.id)})...)
	if old != nil {
		// The registration it replaces (a reboot) is dropped after the
		// answer, and aside: cancelling its observations waits for the
		// device up to a second each, longer than a client waits for
		// its answer.
		s.dropAside(old, false)
	}
	s.log.Info("lwm2m: registered", "device", p.endpoint, "registration", reg.id, "lifetime", p.lifetime, "queue_mode", p.queue(), "peer", reg.peer)
	s.deliver(p.endpoint, &messages.DeviceInput{Kind: &messages.DeviceInput_Connected{Connected: &messages.Connected{QueueMode: p.queue()}}})
	s.awake(reg)
}

// dropAside drops reg on a goroutine of its own (Close waits for it).
func (s *Server) dropAside(reg *registration, offline bool) {
	s.cleanups.Add(1)
	go func() {
		defer s.cleanups.Done()
		s.drop(reg, offline)
	}()
}

// refuseRegistration answers a malformed registration 4.00.
func (s *Server) refuseRegistration(rq *request, why string) {
	s.log.Info("lwm2m: registration refused", "peer", rq.conv.addr(), "reason", why)
	s.answer(rq, codes.BadRequest, why)
}

// authorize tells whether device ep may register on conversation c: over
// DTLS only as its own PSK identity, and only as admit lets it. refused is
// the reason of a refusal (4.03); err is the registry's failure (5.03);
// secure tells whether c is a DTLS session.
func (s *Server) authorize(ctx context.Context, c conv, ep string) (secure bool, product, refused string, err error) {
	identity, secure := c.identity()
	if secure && identity != ep {
		return secure, "", fmt.Sprintf("endpoint %q registers over a DTLS session of %q", ep, identity), nil
	}
	product, err = s.admit(ctx, ep, secure)
	if errors.Is(err, errRefused) {
		return secure, "", err.Error(), nil
	} else if err != nil {
		return secure, "", "", err
	}
	return secure, product, "", nil
}

// record makes p's registration of a device on conversation c: kept in
// Sessions, found by ID, device and peer, expiring after its lifetime,
// with its worker running. It replaces the device's previous registration,
// old, which the caller drops once it has answered.
func (s *Server) record(ctx context.Context, c conv, p regParams, secure bool, product string) (reg, old *registration) {
	reg = newRegistration(newRegID(), p.endpoint, c.addr(), p.lifetime, p.queue())
	reg.conn, reg.secure = c, secure
	s.save(ctx, reg)
	s.mu.Lock()
	old = s.byDev[reg.device]
	s.byID[reg.id], s.byDev[reg.device], s.byPeer[reg.peer] = reg, reg, reg
	s.cfg.Presence.Up(transport.ViaLwM2M, reg.device, product)
	s.mu.Unlock()
	reg.expiry = s.cfg.Clock.AfterFunc(p.lifetime, func() { s.expire(reg) })
	s.ready(reg)
	return reg, old
}

// errBodyTooLarge: a request body of more than maxRegistrationBody bytes.
var errBodyTooLarge = &block1Error{codes.RequestEntityTooLarge, fmt.Sprintf("body of more than %d bytes", maxRegistrationBody)}

// requestBody is a registration request's body, a copy the caller owns:
// the request's own, or with a Block1 option the body reassembled from
// its blocks (see bodies). While blocks are to come it answers 2.31
// Continue, and a refused body the error's code; ok is false then (the
// request is answered). ack are the options the success answer carries
// (the last block's Block1).
func (s *Server) requestBody(rq *request, path string) (body []byte, ack []message.Option, ok bool) {
	peer := rq.conv.addr()
	refuse := func(err error) {
		s.log.Info("lwm2m: request body refused", "peer", peer, "path", path, "reason", err.Error())
		var opts []message.Option
		if codeOf(err) == codes.RequestEntityTooLarge {
			opts = append(opts, uintOpt(message.Size1, maxRegistrationBody)) // the size it takes (RFC 7959 4)
		}
		s.answer(rq, codeOf(err), err.Error(), opts...)
	}
	payload := rq.msg.Payload
	if len(payload) > maxRegistrationBody {
		refuse(errBodyTooLarge)
		return nil, nil, false
	}
	block, err := rq.msg.Options.GetUint32(message.Block1)
	if errors.Is(err, message.ErrOptionNotFound) {
		return bytes.Clone(payload), nil, true
	}
	if err != nil {
		refuse(&block1Error{codes.BadOption, "Block1: " + err.Error()})
		return nil, nil, false
	}
	size1 := int64(-1)
	if v, err := rq.msg.Options.GetUint32(message.Size1); err == nil {
		size1 = int64(v)
	}
	qs, _ := rq.msg.Options.Queries()
	key := "udp " + peer
	if _, secure := rq.conv.identity(); secure {
		key = "dtls " + peer
	}
	body, done, err := s.bodies.add(key, path+"?"+strings.Join(qs, "&"), block, size1, bytes.Clone(payload), s.cfg.Clock.Now())
	switch {
	case err != nil:
		refuse(err)
		return nil, nil, false
	case !done:
		s.answer(rq, codes.Continue, "", uintOpt(message.Block1, block))
		return nil, nil, false
	}
	return body, []message.Option{uintOpt(message.Block1, block)}, true
}

// checkLinks validates a registration's or update's link-format body, when
// present.
func checkLinks(body []byte) error {
	if b := bytes.TrimSpace(body); len(b) > 0 {
		if _, err := parseLinks(string(b)); err != nil {
			return fmt.Errorf("link format: %v", err)
		}
	}
	return nil
}

// update handles POST /rd/{id} with its (reassembled) body; ack are the
// options of its success answer. It answers at once; what it tells the
// store and the engine goes after, in order (reg.run).
func (s *Server) update(rq *request, id string, body []byte, ack []message.Option) {
	reg := s.lookup(id)
	if reg == nil {
		s.answer(rq, codes.NotFound, "unknown registration")
		return
	}
	if err := sameSecurity(reg, rq.conv); err != nil {
		s.log.Info("lwm2m: registration update refused", "device", reg.device, "registration", reg.id, "peer", rq.conv.addr(), "reason", err.Error())
		s.answer(rq, codes.Forbidden, err.Error())
		return
	}
	q, err := queries(rq.msg)
	if err != nil {
		s.answer(rq, codes.BadRequest, err.Error())
		return
	}
	p, err := parseParams(q, body)
	if err != nil {
		s.answer(rq, codes.BadRequest, err.Error())
		return
	}
	p = p.withDefaults(paramsOf(reg))
	lt, queue := p.lifetime, p.queue()
	s.mu.Lock()
	kept := reg.lifetime == lt && reg.queue.Load() == queue
	reg.lifetime = lt
	if peer := rq.conv.addr(); peer != reg.peer {
		// A new address (NAT rebinding): requests go to the new one.
		if s.byPeer[reg.peer] == reg {
			delete(s.byPeer, reg.peer)
		}
		reg.peer, reg.conn = peer, rq.conv
		s.byPeer[peer] = reg
		kept = false
	} else if rq.conv != reg.conn {
		reg.conn = rq.conv // the same address on a new conversation
	}
	changed := reg.queue.Swap(queue) != queue
	s.mu.Unlock()
	reg.expiry.Reset(lt)
	s.answer(rq, codes.Changed, "", ack...)
	ctx := context.WithoutCancel(rq.ctx)
	reg.run(func() {
		if !kept {
			s.save(ctx, reg)
		}
		if changed {
			s.deliver(reg.device, &messages.DeviceInput{Kind: &messages.DeviceInput_Connected{Connected: &messages.Connected{QueueMode: queue}}})
		} else {
			s.deliver(reg.device, &messages.DeviceInput{Kind: &messages.DeviceInput_Uplink{Uplink: &messages.Uplink{RegistrationUpdate: true}}})
		}
	})
	s.awake(reg)
}

// deregister handles DELETE /rd/{id}.
func (s *Server) deregister(rq *request, id string) {
	reg := s.lookup(id)
	if reg == nil {
		s.answer(rq, codes.NotFound, "unknown registration")
		return
	}
	if err := sameSecurity(reg, rq.conv); err != nil {
		s.log.Info("lwm2m: de-registration refused", "device", reg.device, "registration", reg.id, "peer", rq.conv.addr(), "reason", err.Error())
		s.answer(rq, codes.Forbidden, err.Error())
		return
	}
	s.answer(rq, codes.Deleted, "")
	s.log.Info("lwm2m: de-registered", "device", reg.device, "registration", reg.id)
	s.dropAside(reg, true)
}

// errRefused marks the reasons admit refuses a registration (4.03).
var errRefused = errors.New("lwm2m: registration refused")

// admit tells whether device id may register, over DTLS as itself (secure)
// or over plain CoAP: it must be a device of an LwM2M product, and over
// plain CoAP neither have a PSK nor belong to a product in security mode
// PSK. A refusal wraps errRefused; any other error is the registry's.
// It returns the device's product.
func (s *Server) admit(ctx context.Context, id string, secure bool) (product string, err error) {
	d, err := s.cfg.Devices.GetDevice(ctx, id)
	if errors.Is(err, persistence.ErrNotFound) || errors.Is(err, persistence.ErrInvalid) {
		return "", fmt.Errorf("%w: unknown endpoint", errRefused)
	}
	if err != nil {
		return "", err
	}
	p, err := s.cfg.Devices.GetProduct(ctx, d.ProductID)
	if errors.Is(err, persistence.ErrNotFound) {
		return "", fmt.Errorf("%w: unknown endpoint", errRefused)
	}
	if err != nil {
		return "", err
	}
	switch {
	case p.Protocol != persistence.ProtocolLWM2M:
		// As for an unknown endpoint: the device exists, but not for LwM2M.
		return "", fmt.Errorf("%w: unknown endpoint (a device of a %v product)", errRefused, p.Protocol)
	case !secure && d.HasPSK:
		return "", fmt.Errorf("%w: this device has a PSK: it registers over DTLS", errRefused)
	case !secure && p.LwM2MSecurity == persistence.LwM2MPSK:
		return "", fmt.Errorf("%w: the device's product is in security mode PSK: it registers over DTLS", errRefused)
	}
	return d.ProductID, nil
}

// sameSecurity tells whether a request on conversation c may act on reg (an
// update, a de-registration, a download): a registration made over DTLS
// only over DTLS by the same identity, one made over plain CoAP only over
// plain CoAP.
func sameSecurity(reg *registration, c conv) error {
	identity, secure := c.identity()
	switch {
	case reg.secure && !secure:
		return fmt.Errorf("registration %s was made over DTLS: only its DTLS session may change it", reg.id)
	case reg.secure && identity != reg.device:
		return fmt.Errorf("registration %s is of %q, not of the DTLS identity %q", reg.id, reg.device, identity)
	case !reg.secure && secure:
		return fmt.Errorf("registration %s was made over plain CoAP: register again over DTLS", reg.id)
	}
	return nil
}

func (s *Server) lookup(id string) *registration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byID[id]
}

// expire ends a registration whose lifetime passed without an update.
func (s *Server) expire(reg *registration) {
	s.log.Info("lwm2m: registration expired", "device", reg.device, "registration", reg.id)
	s.drop(reg, true)
}

// drop forgets a registration; offline reports the device offline (unless a
// newer registration of the device exists).
func (s *Server) drop(reg *registration, offline bool) {
	s.mu.Lock()
	if s.byID[reg.id] == reg {
		delete(s.byID, reg.id)
	}
	if s.byPeer[reg.peer] == reg {
		delete(s.byPeer, reg.peer)
	}
	current := s.byDev[reg.device] == reg
	if current {
		delete(s.byDev, reg.device)
		s.cfg.Presence.Down(transport.ViaLwM2M, reg.device)
	}
	s.mu.Unlock()
	reg.mu.Lock()
	if reg.gone {
		reg.mu.Unlock()
		return
	}
	reg.gone = true
	obs := reg.obs
	reg.obs = nil
	reg.mu.Unlock()
	reg.end()
	if reg.expiry != nil {
		reg.expiry.Stop()
	}
	if reg.asleep != nil {
		reg.asleep.Stop()
	}
	for _, o := range obs {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = o.cancel(ctx)
		cancel()
	}
	if offline && current {
		s.forget(reg)
		s.deliver(reg.device, &messages.DeviceInput{Kind: &messages.DeviceInput_Disconnected{Disconnected: &messages.Disconnected{}}})
	}
}

// awake notes traffic from a queue-mode device: it is reachable for
// QueueAwake, then asleep.
func (s *Server) awake(reg *registration) {
	if !reg.queue.Load() {
		return
	}
	reg.mu.Lock()
	defer reg.mu.Unlock()
	if reg.gone {
		return
	}
	if reg.asleep != nil {
		reg.asleep.Stop()
	}
	reg.asleep = s.cfg.Clock.AfterFunc(s.cfg.QueueAwake, func() {
		reg.mu.Lock()
		gone := reg.gone
		reg.mu.Unlock()
		if !gone {
			s.deliver(reg.device, &messages.DeviceInput{Kind: &messages.DeviceInput_Asleep{Asleep: &messages.Asleep{}}})
		}
	})
}

// deliver hands one input to the engine, which returns once a report is
// journaled. A confirmable notification is acknowledged only after its
// delivery returns (notified): a device whose notification was
// acknowledged has its report in the journal. Two exceptions, both covered
// by the device machine's deadlines and re-sent requests rather than by the
// device's retransmission: a /5/ notification held while a request on
// object 5 waits for its answer (holdFota) is acknowledged before it is
// delivered; and when the engine cannot journal a report (it is stopping;
// a failed WAL write ends the process first, see
// pebblestore.Options.OnFatal) the ACK still goes out. Answers to
// the server's own requests (piggybacked in the ACK of the request, or
// separate responses) are not retransmitted by the device in any case: a
// lost one is re-asked by the step's deadline. They are marked no_ack (and
// so are non-confirmable notifications), so the engine journals them without
// waiting for an fsync (Engine.Deliver); a confirmable notification is not.
func (s *Server) deliver(id string, in *messages.DeviceInput) error {
	err := s.cfg.Uplinks.Deliver(context.Background(), id, in)
	if err != nil {
		s.log.Warn("lwm2m: delivering to the engine", "device", id, "error", err)
	}
	return err
}

// Send queues a downlink for the device's registration; its requests go out
// one at a time, in order. A device that is not registered misses it (the
// device machine's deadlines cover that).
func (s *Server) Send(ctx context.Context, dl *messages.Downlink) error {
	s.mu.Lock()
	reg := s.byDev[dl.GetDeviceId()]
	s.mu.Unlock()
	if reg == nil {
		return fmt.Errorf("lwm2m: device %q is not registered", dl.GetDeviceId())
	}
	reg.mu.Lock()
	defer reg.mu.Unlock()
	switch {
	case reg.gone:
		return fmt.Errorf("lwm2m: device %q de-registered", dl.GetDeviceId())
	case len(reg.pending) >= maxPending:
		return fmt.Errorf("lwm2m: device %q has %d requests waiting; downlink dropped", dl.GetDeviceId(), len(reg.pending))
	}
	reg.pending = append(reg.pending, dl)
	s.kick(reg)
	return nil
}

// RevokeToken: tokens and handles are checked by Tokens (the download
// server, which serve tells of revocations itself), so there is nothing
// more to revoke here.
func (s *Server) RevokeToken(context.Context, *messages.RevokeToken) error { return nil }

// ready lets reg's queued downlinks go out: it has a conversation.
func (s *Server) ready(reg *registration) {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	reg.ready = true
	s.kick(reg)
}

// kick starts the goroutine that runs reg's queued downlinks, unless it
// runs already, nothing is queued or reg cannot send yet. reg.mu is held.
func (s *Server) kick(reg *registration) {
	if reg.draining || !reg.ready || reg.gone || len(reg.pending) == 0 {
		return
	}
	reg.draining = true
	go s.drain(reg)
}

// drain runs reg's queued downlinks in order and ends when none is left
// (or the registration is gone).
func (s *Server) drain(reg *registration) {
	stacks.Grow() // a round trip runs deep: grow once, not under its frames
	for {
		reg.mu.Lock()
		if reg.gone || len(reg.pending) == 0 {
			reg.draining = false
			reg.pending = nil
			reg.mu.Unlock()
			return
		}
		dl := reg.pending[0]
		reg.pending[0] = nil
		reg.pending = reg.pending[1:]
		reg.mu.Unlock()
		s.do(reg, dl)
	}
}

// maxWork bounds a registration's deliveries waiting to run; a
// notification beyond it is dropped unacknowledged (the device sends it
// again).
const maxWork = 64

// run queues f to run after the deliveries queued before it, on the
// registration's delivery goroutine; false (f dropped) when maxWork are
// waiting.
func (reg *registration) run(f func()) bool {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	if len(reg.work) >= maxWork {
		return false
	}
	reg.work = append(reg.work, f)
	if !reg.working {
		reg.working = true
		go reg.deliveries()
	}
	return true
}

// runWait queues fs as run does, past the bound, and waits until they ran.
func (reg *registration) runWait(fs []func()) {
	done := make(chan struct{})
	reg.mu.Lock()
	reg.work = append(reg.work, fs...)
	reg.work = append(reg.work, func() { close(done) })
	if !reg.working {
		reg.working = true
		go reg.deliveries()
	}
	reg.mu.Unlock()
	<-done
}

// deliveries runs reg's queued deliveries in order and ends when none is
// left.
func (reg *registration) deliveries() {
	for {
		reg.mu.Lock()
		if len(reg.work) == 0 {
			reg.working = false
			reg.work = nil
			reg.mu.Unlock()
			return
		}
		f := reg.work[0]
		reg.work[0] = nil
		reg.work = reg.work[1:]
		reg.mu.Unlock()
		f()
	}
}

// DefaultSocketBuffer is the UDP socket's default receive and send buffer:
// every device of a campaign answers on the one socket, and a burst larger
// than the buffer is dropped by the kernel (then retransmitted by CoAP,
// seconds later).
const DefaultSocketBuffer = 4 << 20

// listenUDP opens the server's socket with buffers of size bytes (the
// kernel caps them at net.core.rmem_max and wmem_max).
func listenUDP(addr string, size int) (*net.UDPConn, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	c, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, err
	}
	if size == 0 {
		size = DefaultSocketBuffer
	}
	if size > 0 {
		if err := errors.Join(c.SetReadBuffer(size), c.SetWriteBuffer(size)); err != nil {
			c.Close()
			return nil, fmt.Errorf("socket buffers of %d bytes: %w", size, err)
		}
	}
	return c, nil
}

// defaultPeerIdle is how long a DTLS session that is not a registered
// device's may stay silent before it is closed (go-coap's default).
const defaultPeerIdle = 16 * time.Second

// closeIfStray is the DTLS inactivity monitor's verdict on a silent peer: a
// registered device's conversation stays open for as long as its
// registration (an NB-IoT device may be silent for hours and must still be
// reachable), anything else is closed. go-coap's default would close every
// conversation after 16 s of silence, leaving a registration whose requests
// fail with "connection was closed" (a device that waited longer than that
// for its cell's slot failed its upgrade).
func (s *Server) closeIfStray(cc *udpClient.Conn) {
	peer := cc.RemoteAddr().String()
	s.mu.Lock()
	reg := s.byPeer[peer]
	registered := reg != nil && reg.conn == conv(dtlsConv{cc})
	s.mu.Unlock()
	if !registered {
		_ = cc.Close()
		if s.onStrayClosed != nil {
			s.onStrayClosed(peer)
		}
	}
}
