package coapudp

import (
	"errors"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"

	"github.com/otafleet/otafleet/internal/clock"
)

// RFC 7252 4.8 transmission parameters (defaults of Config).
const (
	DefaultACKTimeout       = 2 * time.Second
	DefaultACKRandomFactor  = 1.5
	DefaultMaxRetransmit    = 4
	DefaultExchangeLifetime = 247 * time.Second
	DefaultNonLifetime      = 145 * time.Second
	// DefaultMaxDedup is the default cap on duplicate-detection entries:
	// with cached answers of about a hundred bytes, some tens of MB.
	DefaultMaxDedup = 1 << 18
)

// Config configures a Server. The zero value of each field means its
// default.
type Config struct {
	// Handler answers incoming requests (required).
	Handler Handler
	// Clock drives retransmission and expiry (default: the wall clock).
	Clock clock.Clock
	// Logger gets debug lines about dropped datagrams (default: discard).
	Logger *slog.Logger
	// Readers is the number of goroutines reading the socket (default:
	// GOMAXPROCS).
	Readers int
	// ACKTimeout, ACKRandomFactor and MaxRetransmit shape the
	// retransmission of outgoing CON requests (RFC 7252 4.8). A negative
	// MaxRetransmit means none.
	ACKTimeout      time.Duration
	ACKRandomFactor float64
	MaxRetransmit   int
	// ExchangeLifetime is how long a duplicate CON is recognised and how
	// long a peer's Message ID sequence outlives its last request.
	ExchangeLifetime time.Duration
	// NonLifetime is how long a duplicate NON message is recognised (and
	// dropped); it is clamped to ExchangeLifetime. A negative value turns
	// NON duplicate detection off.
	NonLifetime time.Duration
	// SeparateTimeout bounds the wait for a separate response after an
	// empty ACK (default: ExchangeLifetime); the caller's context may end
	// it sooner.
	SeparateTimeout time.Duration
	// MaxDedup caps the duplicate-detection entries; beyond it the oldest
	// are dropped.
	MaxDedup int
	// Unmatched, when set, sees a response (not an empty message) that
	// matches no request or observation before it is rejected: returning
	// true accepts it (a CON one is acknowledged) instead of answering it
	// with an RST. The message is valid only during the call.
	Unmatched func(peer netip.AddrPort, m *message.Message) bool
}

func (c *Config) fill() {
	if c.Clock == nil {
		c.Clock = clock.Real()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Readers <= 0 {
		c.Readers = runtime.GOMAXPROCS(0)
	}
	if c.ACKTimeout <= 0 {
		c.ACKTimeout = DefaultACKTimeout
	}
	if c.ACKRandomFactor < 1 {
		c.ACKRandomFactor = DefaultACKRandomFactor
	}
	if c.MaxRetransmit == 0 {
		c.MaxRetransmit = DefaultMaxRetransmit
	} else if c.MaxRetransmit < 0 {
		c.MaxRetransmit = 0
	}
	if c.ExchangeLifetime <= 0 {
		c.ExchangeLifetime = DefaultExchangeLifetime
	}
	if c.NonLifetime == 0 {
		c.NonLifetime = DefaultNonLifetime
	}
	c.NonLifetime = min(c.NonLifetime, c.ExchangeLifetime)
	if c.SeparateTimeout <= 0 {
		c.SeparateTimeout = c.ExchangeLifetime
	}
	if c.MaxDedup <= 0 {
		c.MaxDedup = DefaultMaxDedup
	}
}

// Errors of outgoing requests.
var (
	// ErrTimeout: no answer after the last retransmission, or no separate
	// response within SeparateTimeout.
	ErrTimeout = errors.New("coapudp: request timed out")
	// ErrReset: the peer rejected the request with an RST.
	ErrReset = errors.New("coapudp: reset by peer")
	// ErrStaleAnswer: the peer acknowledged the request's Message ID with
	// an answer under another token, that is from its duplicate cache (it
	// saw the Message ID from an earlier process of ours within its
	// EXCHANGE_LIFETIME). The request was not carried out; the peer's
	// Message ID sequence has jumped a quarter of the space, so sending the
	// request again works.
	ErrStaleAnswer = errors.New("coapudp: answered from the peer's duplicate cache")
	// ErrClosed: the server was closed.
	ErrClosed = errors.New("coapudp: server closed")
)

const (
	shardCount = 64
	peerLocks  = 1024 // stripes of the per-peer order lock
	midJump    = 0x4000
	maxOptions = 64 // options decoded per message
	readBuffer = 1 << 16
)

// Server is a CoAP over UDP endpoint: create it with New, then Start.
type Server struct {
	cfg    Config
	conn   *net.UDPConn
	start  time.Time
	seed   maphash.Seed
	shards [shardCount]shard
	// order serialises the handling of a peer's datagrams (the calls of
	// the handler, observation callbacks and Unmatched): a peer's stripe
	// is held around each of those calls.
	order [peerLocks]sync.Mutex
	// orderWaits counts the handlings that waited for the one before
	// them on their stripe.
	orderWaits atomic.Int64

	tickMu  sync.Mutex
	ticking bool
	closed  bool
	tick    clock.Timer

	readers sync.WaitGroup
}

// shard is the part of the peer table of the peers whose address hashes to
// it. Everything in it is guarded by mu.
type shard struct {
	mu     sync.Mutex
	dedup  map[peerMID]*seen // incoming CON messages recently seen
	dwheel *wheel[peerMID]
	seqs   map[netip.AddrPort]*midSeq // outgoing Message ID sequences
	swheel *wheel[netip.AddrPort]
	acks   map[peerMID]*exchange // outgoing CON requests awaiting their ACK
	tokens map[string]*exchange  // outgoing requests awaiting their response
	obs    map[string]*Observation
	max    int // cap on len(dedup)
}

type peerMID struct {
	peer netip.AddrPort
	mid  uint16
}

// seen is a duplicate-detection entry: the answer given to a CON message
// (nil while it is being processed, or for a safe request: none kept).
type seen struct {
	expires int64
	done    bool
	reply   []byte
}

// midSeq is the Message ID sequence of a peer's outgoing requests.
type midSeq struct {
	next    uint16
	expires int64
}

// New returns a server on conn (which it owns from now on and closes in
// Close). It reads nothing before Start.
func New(conn *net.UDPConn, cfg Config) (*Server, error) {
	if cfg.Handler == nil {
		return nil, errors.New("coapudp: Config needs a Handler")
	}
	cfg.fill()
	s := &Server{cfg: cfg, conn: conn, start: cfg.Clock.Now(), seed: maphash.MakeSeed()}
	span := int64((cfg.ExchangeLifetime + time.Second - 1) / time.Second)
	for i := range s.shards {
		sh := &s.shards[i]
		sh.dedup = map[peerMID]*seen{}
		sh.dwheel = newWheel[peerMID](span, 0)
		sh.seqs = map[netip.AddrPort]*midSeq{}
		sh.swheel = newWheel[netip.AddrPort](span, 0)
		sh.acks = map[peerMID]*exchange{}
		sh.tokens = map[string]*exchange{}
		sh.obs = map[string]*Observation{}
		sh.max = max(1, cfg.MaxDedup/shardCount)
	}
	return s, nil
}

// Listen opens a UDP socket on addr ("host:port") and returns a server on
// it; see New.
func Listen(addr string, cfg Config) (*Server, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	c, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, err
	}
	s, err := New(c, cfg)
	if err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}

// Addr is the address the server's socket is bound to.
func (s *Server) Addr() netip.AddrPort {
	return s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Start starts the reader goroutines.
func (s *Server) Start() {
	for range s.cfg.Readers {
		s.readers.Add(1)
		go s.read()
	}
}

// Close closes the socket, waits for the readers to return and ends every
// request in flight with ErrClosed.
func (s *Server) Close() error {
	s.tickMu.Lock()
	s.closed = true
	if s.tick != nil {
		s.tick.Stop()
	}
	s.tickMu.Unlock()
	err := s.conn.Close()
	s.readers.Wait()
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		var pending []*exchange
		for _, ex := range sh.tokens {
			pending = append(pending, ex)
		}
		for _, ex := range sh.acks {
			pending = append(pending, ex)
		}
		for _, ex := range pending {
			sh.finishLocked(ex, nil, ErrClosed)
		}
		clear(sh.obs)
		sh.mu.Unlock()
	}
	return err
}

// orderOf returns the lock that serialises the handling of peer's
// datagrams.
func (s *Server) orderOf(peer netip.AddrPort) *sync.Mutex {
	return &s.order[maphash.Comparable(s.seed, peer)/shardCount%peerLocks]
}

// lockOrder takes peer's order lock and returns it.
func (s *Server) lockOrder(peer netip.AddrPort) *sync.Mutex {
	mu := s.orderOf(peer)
	if !mu.TryLock() {
		s.orderWaits.Add(1)
		mu.Lock()
	}
	return mu
}

// shardOf returns the shard of peer.
func (s *Server) shardOf(peer netip.AddrPort) *shard {
	return &s.shards[maphash.Comparable(s.seed, peer)%shardCount]
}

// sec is the current second of the server's timing wheels.
func (s *Server) sec() int64 {
	return int64(s.cfg.Clock.Since(s.start) / time.Second)
}

// ensureTick arms the one-second tick that advances the wheels, if it is
// not armed. The caller must not hold a shard lock.
func (s *Server) ensureTick() {
	s.tickMu.Lock()
	defer s.tickMu.Unlock()
	if s.ticking || s.closed {
		return
	}
	s.ticking = true
	s.tick = s.cfg.Clock.AfterFunc(time.Second, s.onTick)
}

// onTick advances every shard's wheels to the current second and re-arms
// itself while any entry is left.
func (s *Server) onTick() {
	s.tickMu.Lock()
	defer s.tickMu.Unlock()
	if s.closed {
		return
	}
	now := s.sec()
	left := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.expireLocked(now)
		left += sh.dwheel.len() + sh.swheel.len()
		sh.mu.Unlock()
	}
	if left == 0 {
		s.ticking = false
		return
	}
	s.tick = s.cfg.Clock.AfterFunc(time.Second, s.onTick)
}

// expireLocked drops the entries that expired by second now.
func (sh *shard) expireLocked(now int64) {
	sh.dwheel.advance(now, func(k peerMID) {
		if e := sh.dedup[k]; e != nil && e.expires <= now {
			delete(sh.dedup, k)
		}
	})
	sh.swheel.advance(now, func(p netip.AddrPort) {
		if q := sh.seqs[p]; q != nil && q.expires <= now {
			delete(sh.seqs, p)
		}
	})
}

// remember files a duplicate-detection entry for k, dropping the oldest
// entries beyond the cap. It returns the entry.
func (sh *shard) rememberLocked(k peerMID, now, lifetime int64) *seen {
	for len(sh.dedup) >= sh.max {
		old, ok := sh.dwheel.oldest()
		if !ok {
			break
		}
		delete(sh.dedup, old)
	}
	e := &seen{expires: now + lifetime}
	sh.dedup[k] = e
	sh.dwheel.add(k, e.expires)
	return e
}

// nextMIDLocked returns the next Message ID of an outgoing message to peer
// and keeps the peer's sequence for another ExchangeLifetime.
func (sh *shard) nextMIDLocked(peer netip.AddrPort, now, lifetime int64) uint16 {
	q := sh.seqs[peer]
	if q == nil {
		q = &midSeq{next: uint16(rand.Uint32())}
		sh.seqs[peer] = q
	}
	q.expires = now + lifetime
	sh.swheel.add(peer, q.expires)
	mid := q.next
	q.next++
	return mid
}

// lifetime is ExchangeLifetime in whole seconds.
func (s *Server) lifetime() int64 {
	return int64((s.cfg.ExchangeLifetime + time.Second - 1) / time.Second)
}

// nonLifetime is NonLifetime in whole seconds.
func (s *Server) nonLifetime() int64 {
	return int64((s.cfg.NonLifetime + time.Second - 1) / time.Second)
}

// read is a reader goroutine: it reads datagrams until the socket closes.
func (s *Server) read() {
	defer s.readers.Done()
	r := newReader()
	for {
		n, peer, err := s.conn.ReadFromUDPAddrPort(r.buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.cfg.Logger.Debug("coapudp: read", "error", err)
			continue
		}
		s.datagram(r, peer, r.buf[:n])
	}
}

// reader is the scratch space of one reader goroutine.
type reader struct {
	buf  []byte
	opts message.Options
	out  []byte
	w    ResponseWriter
}

func newReader() *reader {
	return &reader{buf: make([]byte, readBuffer), opts: make(message.Options, 0, maxOptions), out: make([]byte, 0, 2048)}
}

// unmap turns an IPv4-mapped IPv6 address into IPv4, so that a peer has one
// key whatever the socket reports.
func unmap(p netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(p.Addr().Unmap(), p.Port())
}

// datagram handles one datagram b from peer.
func (s *Server) datagram(r *reader, peer netip.AddrPort, b []byte) {
	peer = unmap(peer)
	var m message.Message
	m.Options = r.opts[:0]
	if _, err := coder.DefaultCoder.Decode(b, &m); err != nil {
		// RFC 7252 4.2/4.3: reject a malformed CON; drop anything else.
		if len(b) >= 4 && b[0]>>6 == 1 && message.Type(b[0]>>4&3) == message.Confirmable {
			s.send(peer, encodeEmpty(r.out[:0], message.Reset, uint16(b[2])<<8|uint16(b[3])))
		}
		s.cfg.Logger.Debug("coapudp: malformed datagram dropped", "peer", peer.String(), "error", err)
		return
	}
	mid := uint16(m.MessageID)
	switch m.Type {
	case message.Reset:
		s.reset(peer, mid)
	case message.Acknowledgement:
		s.ack(peer, b, &m)
	default: // CON, NON
		switch {
		case m.Code == codes.Empty:
			if m.Type == message.Confirmable { // a ping (4.3): RST
				s.send(peer, encodeEmpty(r.out[:0], message.Reset, mid))
			}
		case m.Code < 32:
			s.request(r, peer, &m)
		case m.Code >= 64:
			s.response(r, peer, b, &m)
		default: // class 1: reserved
			if m.Type == message.Confirmable {
				s.send(peer, encodeEmpty(r.out[:0], message.Reset, mid))
			}
		}
	}
}

// safe reports whether a request method may be processed again for a
// duplicate instead of answered from the duplicate cache.
func safe(c codes.Code) bool { return c == codes.GET || c == codeFETCH }

// codeFETCH is FETCH (RFC 8132), which go-coap does not name.
const codeFETCH codes.Code = 5

// request handles an incoming request: duplicate detection, the handler
// (under the peer's order lock), the answer (unless the handler deferred
// it).
func (s *Server) request(r *reader, peer netip.AddrPort, m *message.Message) {
	con := m.Type == message.Confirmable
	mid := uint16(m.MessageID)
	var e *seen
	switch {
	case con && !safe(m.Code):
		if e = s.dup(peer, mid); e == nil {
			return // answered (or being answered) already
		}
	case !con:
		if !s.firstNON(peer, mid) {
			return
		}
	}
	w := &r.w
	w.reset()
	w.s, w.peer, w.con, w.mid, w.token, w.e = s, peer, con, mid, m.Token, e
	order := s.lockOrder(peer)
	s.cfg.Handler(w, &Request{Peer: peer, Msg: m})
	order.Unlock()
	w.token, w.e = nil, nil
	if !w.deferred {
		s.answer(w, peer, con, mid, m.Token, e, r.out)
	}
}

// answer sends w's response (an empty ACK to a CON request when w has
// none) to the request (peer, mid, token), recording it in the request's
// duplicate-detection entry e when there is one. buf is scratch space.
func (s *Server) answer(w *ResponseWriter, peer netip.AddrPort, con bool, mid uint16, token message.Token, e *seen, buf []byte) {
	var out []byte
	switch {
	case con && w.set:
		out = w.encode(buf[:0], message.Acknowledgement, mid, token)
	case con:
		out = encodeEmpty(buf[:0], message.Acknowledgement, mid)
	case w.set:
		out = w.encode(buf[:0], message.NonConfirmable, uint16(rand.Uint32()), token)
	}
	if e != nil {
		s.answered(peer, e, out)
	}
	if out != nil {
		s.send(peer, out)
	}
}

// firstNON reports whether the NON message (peer, mid) is new, and files
// it for NonLifetime (RFC 7252 4.5); a duplicate is dropped by the caller.
func (s *Server) firstNON(peer netip.AddrPort, mid uint16) bool {
	if s.cfg.NonLifetime < 0 {
		return true
	}
	sh := s.shardOf(peer)
	k := peerMID{peer, mid}
	sh.mu.Lock()
	if sh.dedup[k] != nil {
		sh.mu.Unlock()
		return false
	}
	sh.rememberLocked(k, s.sec(), s.nonLifetime()).done = true
	sh.mu.Unlock()
	s.ensureTick()
	return true
}

// dup looks up the CON message (peer, mid): for a duplicate it re-sends the
// cached answer (or nothing, while the first copy is being processed) and
// returns nil; for a new one it files an entry and returns it.
func (s *Server) dup(peer netip.AddrPort, mid uint16) *seen {
	sh := s.shardOf(peer)
	k := peerMID{peer, mid}
	sh.mu.Lock()
	if e := sh.dedup[k]; e != nil {
		var reply []byte
		if e.done {
			reply = e.reply
		}
		sh.mu.Unlock()
		if reply != nil {
			s.send(peer, reply)
		}
		return nil
	}
	e := sh.rememberLocked(k, s.sec(), s.lifetime())
	sh.mu.Unlock()
	s.ensureTick()
	return e
}

// answered records the answer out (nil: none) to a CON message in its
// duplicate-detection entry.
func (s *Server) answered(peer netip.AddrPort, e *seen, out []byte) {
	var reply []byte
	if out != nil {
		reply = append([]byte(nil), out...)
	}
	sh := s.shardOf(peer)
	sh.mu.Lock()
	e.done, e.reply = true, reply
	sh.mu.Unlock()
}

// send writes one datagram to peer.
func (s *Server) send(peer netip.AddrPort, b []byte) {
	if _, err := s.conn.WriteToUDPAddrPort(b, peer); err != nil {
		s.cfg.Logger.Debug("coapudp: write", "peer", peer.String(), "error", err)
	}
}

// encodeEmpty appends an empty message (an ACK or RST) to buf.
func encodeEmpty(buf []byte, t message.Type, mid uint16) []byte {
	return append(buf, 1<<6|byte(t)<<4, 0, byte(mid>>8), byte(mid))
}

// encode appends m to buf with go-coap's codec.
func encode(buf []byte, m message.Message) ([]byte, error) {
	n, err := coder.DefaultCoder.Size(m)
	if err != nil {
		return nil, err
	}
	if cap(buf)-len(buf) < n {
		buf = append(buf[:len(buf):len(buf)], make([]byte, n)...)[:len(buf)]
	}
	if _, err := coder.DefaultCoder.Encode(m, buf[len(buf):len(buf)+n]); err != nil {
		return nil, err
	}
	return buf[:len(buf)+n], nil
}

// decodeCopy decodes a copy of the datagram b into a message that owns its
// memory (the reader's buffer is reused). opts is the number of options the
// reader decoded from b: the copy's options take that much room, not
// maxOptions (2 KiB for every answer a device gives the server, most of the
// garbage of a PCP upgrade). One slot more than opts is kept because the
// codec asks for a free slot before it skips an option it does not keep.
func decodeCopy(b []byte, opts int) (*message.Message, error) {
	c := append([]byte(nil), b...)
	m := &message.Message{Options: make(message.Options, 0, min(opts+1, maxOptions))}
	if _, err := coder.DefaultCoder.Decode(c, m); err != nil {
		return nil, err
	}
	m.Options = m.Options[:len(m.Options):len(m.Options)]
	return m, nil
}

// dedupEntries is the number of duplicate-detection entries (for tests and
// benchmarks).
func (s *Server) dedupEntries() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.dedup)
		sh.mu.Unlock()
	}
	return n
}

// peerState is the number of per-peer records of every kind (for tests).
func (s *Server) peerState() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.dedup) + len(sh.seqs) + len(sh.acks) + len(sh.tokens) + len(sh.obs)
		sh.mu.Unlock()
	}
	return n
}
