package mqtt

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/otafleet/otafleet/internal/clock"
)

// Defaults of the connection limits (BrokerConfig and the serve flags).
const (
	// DefaultConnectTimeout bounds the time from accept to a complete
	// CONNECT packet (TLS handshake included).
	DefaultConnectTimeout = 10 * time.Second
	// DefaultMaxConnections bounds the open connections of all listeners:
	// room for a large fleet on one node (bench connects 100,000 devices).
	DefaultMaxConnections = 200_000
	// DefaultMaxConnectionsPerSource bounds the open connections of one
	// source address. Devices behind a carrier's NAT share an address, and
	// bench puts up to bench.DevicesPerLocalAddr (16,000) devices on one
	// loopback address.
	DefaultMaxConnectionsPerSource = 20_000
	// MaxConnectSize is the largest first packet (a CONNECT) read from a new
	// connection, fixed header included: an IoTDA CONNECT is about 200
	// bytes (client ID, user name, 64-hex password).
	MaxConnectSize = 4 << 10
	// maxWritesPending is mochi's per-client queue of outgoing packets: an
	// OTA device is sent a version query or an upgrade event at a time.
	maxWritesPending = 16
	// readBufferSize is a connection's read-ahead (front.go; mochi's
	// per-client read buffer is 2 KiB by default and goes unused): a fixed
	// header, a PUBACK or a PINGREQ; a larger packet is read straight into
	// its own slice.
	readBufferSize = 32
)

// Reasons a connection is refused or closed before its login, the label of
// otafleet_mqtt_connections_refused_total.
const (
	refusedMaxConnections = "max_connections"
	refusedPerSource      = "max_connections_per_source"
	refusedFirstPacket    = "first_packet"
	refusedConnectTimeout = "connect_timeout"
)

// connLimits counts the open connections of the broker's listeners, in
// total and per source address. It is safe for concurrent use.
type connLimits struct {
	max, perSource int // <= 0: no limit

	mu       sync.Mutex
	total    int
	bySource map[netip.Addr]int
}

// acquire takes a slot for a connection from src, or returns why not.
func (l *connLimits) acquire(src netip.Addr) (refused string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.max > 0 && l.total >= l.max {
		return refusedMaxConnections
	}
	if l.perSource > 0 && l.bySource[src] >= l.perSource {
		return refusedPerSource
	}
	l.total++
	l.bySource[src]++
	return ""
}

// release gives back the slot of a connection from src.
func (l *connLimits) release(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if n := l.bySource[src] - 1; n > 0 {
		l.bySource[src] = n
	} else {
		delete(l.bySource, src)
	}
}

// sourceOf is the IP address of a remote address (IPv4-mapped IPv6
// addresses as IPv4); the zero Addr when it has none.
func sourceOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// limitListener closes a new connection at once when it is beyond the
// limits, and gives its slot back when an accepted connection closes. A
// temporary accept error (out of file descriptors) is retried after a
// pause, as net/http does, instead of ending the listener.
type limitListener struct {
	net.Listener
	limits  *connLimits
	refused func(reason string, remote net.Addr)
	failed  func(err error)
}

func (l *limitListener) Accept() (net.Conn, error) {
	var pause time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.Is(err, net.ErrClosed) || !errors.As(err, &ne) {
				return nil, err
			}
			// EMFILE and the like: wait for connections to end.
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			l.failed(err)
			t := clock.Real().NewTimer(pause) // a socket's pace is wall-clock time
			<-t.C()
			continue
		}
		pause = 0
		src := sourceOf(c.RemoteAddr())
		if why := l.limits.acquire(src); why != "" {
			l.refused(why, c.RemoteAddr()) // counted before the peer sees the close
			_ = c.Close()
			continue
		}
		return &countedConn{Conn: c, release: func() { l.limits.release(src) }}, nil
	}
}

// countedConn gives its slot back once, when it is closed.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// loginListener bounds what a new connection may cost before it has logged
// in: its first packet must be a CONNECT of at most maxFirst bytes and must
// arrive within timeout of the accept. mochi reads a packet by allocating
// the remaining length its fixed header announces and then waiting for the
// bytes, and sets no read deadline before a CONNECT: so the header is
// checked here, before mochi sees a byte, and a read deadline is set at
// accept (mochi replaces it with the keep-alive deadline after the login).
type loginListener struct {
	net.Listener
	timeout  time.Duration
	maxFirst int
	refused  func(reason string, remote net.Addr)
}

func (l *loginListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		// Socket deadlines are wall-clock times. A connection that fails
		// here has gone already; mochi's accept loop must not end for it.
		if err := c.SetReadDeadline(clock.Real().Now().Add(l.timeout)); err != nil {
			_ = c.Close()
			continue
		}
		return &firstPacketConn{Conn: c, max: l.maxFirst, refused: l.refused}, nil
	}
}

// Errors of a first packet, closing the connection.
var (
	errFirstNotConnect   = errors.New("mqtt: the first packet is not a CONNECT")
	errFirstTooLarge     = errors.New("mqtt: the CONNECT packet is too large")
	errFirstBadLength    = errors.New("mqtt: the CONNECT packet's remaining length is malformed")
	errConnectIncomplete = errors.New("mqtt: no complete CONNECT before the deadline")
)

// firstPacketConn checks the fixed header of the first packet as its bytes
// pass (see loginListener) and then steps aside. Its reads come from one
// goroutine (mochi's reader), so its state needs no lock.
type firstPacketConn struct {
	net.Conn
	max     int
	refused func(reason string, remote net.Addr)

	state     int // firstType, firstLength, firstBody or firstDone
	length    int // the remaining length, as decoded so far
	shift     uint
	remaining int // bytes of the first packet still to come
}

const (
	firstType = iota
	firstLength
	firstBody
	firstDone
)

func (c *firstPacketConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.state == firstDone {
		return n, err
	}
	if ferr := c.scan(p[:n]); ferr != nil {
		c.refused(refusedFirstPacket, c.RemoteAddr())
		_ = c.Conn.Close()
		return 0, fmt.Errorf("%w (at most %d bytes)", ferr, c.max)
	}
	if err != nil && c.state != firstDone {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.refused(refusedConnectTimeout, c.RemoteAddr())
			return n, fmt.Errorf("%w: %w", errConnectIncomplete, err)
		}
	}
	return n, err
}

// scan follows the first packet's fixed header through b.
func (c *firstPacketConn) scan(b []byte) error {
	for i := 0; i < len(b) && c.state != firstDone; i++ {
		switch c.state {
		case firstType:
			if b[i]>>4 != 1 { // CONNECT
				return errFirstNotConnect
			}
			c.state = firstLength
		case firstLength:
			c.length |= int(b[i]&0x7f) << c.shift
			c.shift += 7
			if 1+int(c.shift/7)+c.length > c.max {
				return errFirstTooLarge
			}
			if b[i]&0x80 != 0 {
				if c.shift >= 28 {
					return errFirstBadLength
				}
				continue
			}
			c.remaining = c.length
			c.state = firstBody
			if c.remaining == 0 {
				c.state = firstDone
			}
		case firstBody:
			take := min(c.remaining, len(b)-i)
			c.remaining -= take
			i += take - 1
			if c.remaining == 0 {
				c.state = firstDone
			}
		}
	}
	return nil
}
