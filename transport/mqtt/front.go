package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/transport/mqtt/iotda"
)

// The front end: the broker's own accept loops and connection readers, in
// place of mochi's (listeners.Net and Server.EstablishConnection).
//
// mochi runs two goroutines a client: its read loop, parked in a read under
// frames that hold packets by value (attachClient and Client.Read, 4.5 KB),
// so that its stack, grown to 16 KiB by the hooks of a login or a publish,
// never shrinks back (the runtime halves a stack only when less than a
// quarter is used); and a write loop of its own (4 KiB). That was 20 KB of
// the 30 KB an idle device cost. Here each connection has one goroutine, its
// reader, which only moves bytes: it waits for a packet with a few hundred
// bytes of stack (no packet value on it) and hands the packet's bytes to a
// worker of a shared pool (workers), which decodes it and drives mochi
// through its public API (Client, SendConnack, InjectPacket,
// DisconnectClient) and the hook, exactly as attachClient would, while the
// reader waits (a publish on the device's up topic, every report, goes to
// the hook without mochi's publish path: uplink). So a connection's packets
// are handled one at a time and in order, as before, and the deep stacks
// belong to the few workers busy at a moment, not to every connection. Downlinks are written by their own
// short-lived goroutine (publishDown); mochi's write loop is not run (nothing
// is queued to it: uplinks are never forwarded to subscribers, retained
// messages are off and the ACL admits no $SYS topic).
//
// Sessions end with their connection (mochi's MaximumSessionExpiryInterval
// is 0): a CONNACK never reports a session present, and a new connection
// with the client ID of an open one takes it over (the old one is sent a
// DISCONNECT and closed).

// conn is one connection. Its reader state (buf, r, w, fh, body, step) is
// touched by its reader, and by a worker while the reader waits for it; cl's
// state is mochi's. The downlink queue is guarded by Broker.mu.
type conn struct {
	cl       *mqtt.Client
	nc       net.Conn // what the reader reads: after the login, without the first-packet check
	listener string

	buf  [readBufferSize]byte // bytes read ahead: a fixed header, a small packet
	r, w int                  // buf[r:w] are unread
	fh   packets.FixedHeader
	body []byte // the packet the worker handles; nil once handled
	step step
	done chan error // the worker's answer to the reader
	err  error      // why the connection ended (the end step)

	device  string // the device ID it logged in as (deviceOf); set by the login
	product string // its product, read at the login (Presence)

	// Guarded by Broker.mu.
	queue     []packets.Packet // downlinks, oldest first; at most maxWritesPending
	writing   bool             // a goroutine (drain) is writing the queue
	takenOver bool             // a later connection with its client ID replaced it
	loggedIn  bool             // counted in mochi's ClientsConnected
}

// step is what a worker does for a connection.
type step uint8

const (
	stepHandshake step = iota // the TLS handshake
	stepConnect               // the CONNECT in body: the login
	stepPacket                // any later packet in body
	stepEnd                   // the connection has ended: clean up
)

// accept serves one listener until it is closed.
func (b *Broker) accept(id string, lis net.Listener) {
	defer b.wg.Done()
	for {
		nc, err := lis.Accept()
		if err != nil {
			return // closed; limitListener retries what is temporary
		}
		b.wg.Add(1)
		go b.serve(id, nc)
	}
}

// serve runs a connection's reader, then has a worker clean up.
func (b *Broker) serve(listener string, nc net.Conn) {
	c := &conn{nc: nc, listener: listener, done: make(chan error, 1)}
	// No net.Conn for mochi's NewClient: it would wrap it in a read buffer
	// that the reader does not use. Writes go to Net.Conn.
	c.cl = b.server.NewClient(nil, listener, "", false)
	c.cl.Net.Conn = nc
	c.cl.Net.Remote = nc.RemoteAddr().String()
	b.mu.Lock()
	closing := b.closing
	if !closing {
		b.conns[c] = struct{}{}
	}
	b.mu.Unlock()
	if closing {
		_ = nc.Close()
		b.wg.Done()
		return
	}
	c.err = b.read(c)
	c.step = stepEnd
	b.workers.submit(c) // the worker calls wg.Done
}

// read is the reader's loop: it reads each packet's bytes, hands them to a
// worker and waits for it. It returns when the connection ends (nil: the
// client disconnected, or the broker closed the connection after a packet).
func (b *Broker) read(c *conn) error {
	if fc, ok := c.nc.(*firstPacketConn); ok {
		if _, ok := fc.Conn.(*tls.Conn); ok {
			if err := b.handOver(c, stepHandshake); err != nil {
				return err
			}
		}
	}
	next := stepConnect
	for {
		if err := c.readPacket(b.server.Options.Capabilities.MaximumPacketSize); err != nil {
			return err
		}
		if err := b.handOver(c, next); err != nil {
			return err
		}
		if c.cl.Closed() {
			return nil
		}
		if fc, ok := c.nc.(*firstPacketConn); ok && next == stepConnect {
			c.nc = fc.Conn // logged in: its check is done, and the reader's stack one frame shallower
		}
		next = stepPacket
		refreshDeadline(c)
	}
}

// handOver has a worker do s for c and waits for its answer.
func (b *Broker) handOver(c *conn, s step) error {
	c.step = s
	b.workers.submit(c)
	return <-c.done
}

// refreshDeadline gives the connection until one and a half keep-alive
// periods from now to send its next packet (and to take a write), as mochi
// does before each read ([MQTT-3.1.2-22]); no deadline when keep-alive is 0.
func refreshDeadline(c *conn) {
	var at time.Time
	if ka := c.cl.State.Keepalive; ka > 0 {
		at = clock.Real().Now().Add(time.Duration(ka+ka/2) * time.Second) // a socket's deadline is wall-clock time
	}
	_ = c.nc.SetDeadline(at)
}

// readPacket reads the next packet's fixed header into c.fh and its
// remaining bytes into c.body (a new slice: decoded packets keep parts of
// it). A packet larger than maxSize (0: no limit) is refused as mochi
// refuses it. Small packets arrive in one read; a larger one is read
// straight into its body.
func (c *conn) readPacket(maxSize uint32) error {
	b, err := c.ReadByte()
	if err != nil {
		return err
	}
	c.fh = packets.FixedHeader{}
	if err := c.fh.Decode(b); err != nil {
		return err
	}
	n, _, err := packets.DecodeLength(c)
	if err != nil {
		return err
	}
	if maxSize > 0 && uint32(n+1) > maxSize {
		return packets.ErrPacketTooLarge // [MQTT-3.2.2-15]
	}
	c.fh.Remaining = n
	c.body = make([]byte, n)
	got := copy(c.body, c.buf[c.r:c.w])
	c.r += got
	if got < n {
		if _, err := io.ReadFull(c.nc, c.body[got:]); err != nil {
			return err
		}
	}
	return nil
}

// ReadByte reads one byte through c's buffer (io.ByteReader, for the
// remaining length).
func (c *conn) ReadByte() (byte, error) {
	if c.r == c.w {
		c.r, c.w = 0, 0
		n, err := c.nc.Read(c.buf[:])
		if n == 0 {
			if err == nil {
				err = io.ErrNoProgress
			}
			return 0, err
		}
		c.w = n // a read error with bytes comes back on the next read
	}
	b := c.buf[c.r]
	c.r++
	return b, nil
}

// work does c's step; it runs on a worker.
func (b *Broker) work(c *conn) {
	switch c.step {
	case stepHandshake:
		fc := c.nc.(*firstPacketConn)
		c.done <- fc.Conn.(*tls.Conn).HandshakeContext(context.Background()) // bounded by the accept's read deadline
	case stepConnect, stepPacket:
		c.done <- b.handle(c)
	case stepEnd:
		b.end(c)
	}
}

// handle decodes the packet in c.body and processes it: the login for the
// first, mochi's processing (Server.InjectPacket) for the others.
func (b *Broker) handle(c *conn) error {
	cl := c.cl
	pk := packets.Packet{FixedHeader: c.fh, ProtocolVersion: cl.Properties.ProtocolVersion}
	body := c.body
	c.body = nil
	atomic.AddInt64(&b.server.Info.BytesReceived, int64(len(body)+1+lengthBytes(c.fh.Remaining)))
	if err := decodePacket(&pk, body); err != nil {
		return err
	}
	if c.step == stepConnect {
		if pk.FixedHeader.Type != packets.Connect {
			return packets.ErrProtocolViolationRequireFirstConnect // [MQTT-3.1.0-1]
		}
		if err := b.login(c, pk); err != nil {
			return fmt.Errorf("login: %w", err)
		}
		return nil
	}
	var err error
	if b.isUplink(c, pk) {
		err = b.uplink(c, pk)
	} else {
		err = b.server.InjectPacket(cl, pk)
	}
	// What mochi's receivePacket does with an error: an MQTT 5 client is
	// told why, and the connection ends.
	if err != nil {
		if code, ok := err.(packets.Code); ok && cl.Properties.ProtocolVersion == 5 && code.Code >= packets.ErrUnspecifiedError.Code {
			_ = b.server.DisconnectClient(cl, code)
		}
		b.mochiLog.Warn("error processing packet", "error", err, "client", cl.ID, "listener", c.listener, "pk", pk)
	}
	return err
}

// isUplink reports whether pk is a publish the front end handles itself
// (uplink): QoS 0 or 1 on the up topic of the device c logged in as, named
// in full (no topic alias), and valid as mochi checks a publish
// (PublishValidate). Every other packet goes to mochi (InjectPacket).
func (b *Broker) isUplink(c *conn, pk packets.Packet) bool {
	return pk.FixedHeader.Type == packets.Publish && c.device != "" && iotda.IsUpTopic(pk.TopicName, c.device) && pk.FixedHeader.Qos <= 1 &&
		!pk.Properties.TopicAliasFlag && pk.PublishValidate(b.server.Options.Capabilities.TopicAliasMaximum) == packets.CodeSuccess
}

// uplink processes a device's publish on its up topic (isUplink) as mochi's
// processPublish would, with the same outcome on the wire: the hook takes
// it (hook.uplink: the token bucket, the decoding, the engine's journal),
// then a QoS 1 publish the hook did not reject gets the PUBACK mochi would
// send (the same packet: reason code and the publish's properties), and
// mochi's counters count it. It skips what has no work on the device's own
// up topic: the topic filter and ACL checks (the topic is its own), the
// PUBACK's round trip through the client's inflight set (mochi sets it
// before the write and deletes it after: 800 bytes allocated a publish),
// retaining (off) and the walk of the topic index for subscribers
// (uplinks go to none). A connection's packets are handled one at a time,
// so mochi's receive quota, which only QoS 2 publishes hold, is not
// touched.
func (b *Broker) uplink(c *conn, pk packets.Packet) error {
	if err := b.hook.uplink(c.device, pk); err == nil && pk.FixedHeader.Qos == 1 {
		ack := packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Puback},
			PacketID:    pk.PacketID,                               // [MQTT-2.2.1-5]
			ReasonCode:  packets.QosCodes[pk.FixedHeader.Qos].Code, // [MQTT-3.4.2-1]
			Properties:  pk.Properties,                             // as mochi's buildAck: inherited
			Created:     b.cfg.Clock.Now().Unix(),
		}
		if err := c.cl.WritePacket(ack); err != nil {
			return err
		}
	}
	atomic.AddInt64(&b.server.Info.PacketsReceived, 1)
	atomic.AddInt64(&b.server.Info.MessagesReceived, 1)
	return nil
}

// lengthBytes is the size of the encoded remaining length n.
func lengthBytes(n int) int {
	k := 1
	for ; n > 127; n >>= 7 {
		k++
	}
	return k
}

// decodePacket decodes body into pk by pk's type, as mochi's
// Client.ReadPacket does.
func decodePacket(pk *packets.Packet, body []byte) error {
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Pubrec:
		err = pk.PubrecDecode(body)
	case packets.Pubrel:
		err = pk.PubrelDecode(body)
	case packets.Pubcomp:
		err = pk.PubcompDecode(body)
	case packets.Subscribe:
		err = pk.SubscribeDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Unsubscribe:
		err = pk.UnsubscribeDecode(body)
	case packets.Unsuback:
		err = pk.UnsubackDecode(body)
	case packets.Pingreq, packets.Pingresp:
	case packets.Auth:
		err = pk.AuthDecode(body)
	default:
		err = fmt.Errorf("invalid packet type; %v", pk.FixedHeader.Type)
	}
	return err
}

// login is mochi's attachClient from the CONNECT to the CONNACK: the
// CONNECT's checks (validateConnect), the hook's login, the take-over of a
// connection with the same client ID, the CONNACK, then the session.
func (b *Broker) login(c *conn, pk packets.Packet) error {
	cl := c.cl
	cl.ParseConnect(c.listener, pk)
	if code := validateConnect(b.server.Options.Capabilities, cl, pk); code != packets.CodeSuccess {
		if err := b.server.SendConnack(cl, code, false, nil); err != nil {
			return fmt.Errorf("invalid connection send ack: %w", err)
		}
		return code // [MQTT-3.2.2-7] [MQTT-3.1.4-6]
	}
	product, err := b.hook.logIn(cl, pk)
	if err != nil {
		return err
	}
	c.device, c.product = deviceOf(cl), product
	refreshDeadline(c)
	b.mu.Lock()
	c.loggedIn = true
	old := b.sameClientID(c)
	if old != nil {
		old.takenOver = true
	}
	b.mu.Unlock()
	atomic.AddInt64(&b.server.Info.ClientsConnected, 1)
	if old != nil { // [MQTT-3.1.4-3] [MQTT-3.1.2-4]: the old session ends
		_ = b.server.DisconnectClient(old.cl, packets.ErrSessionTakenOver)
		b.server.UnsubscribeClient(old.cl)
		old.cl.ClearInflights()
		b.mochiLog.Debug("session taken over", "client", cl.ID, "old_remote", old.cl.Net.Remote, "new_remote", cl.Net.Remote)
	}
	if err := b.server.SendConnack(cl, packets.CodeSuccess, false, nil); err != nil { // [MQTT-3.2.2-3]: no session present
		return fmt.Errorf("ack connection packet: %w", err)
	}
	b.established(c)
	return nil
}

// validateConnect is mochi's check of a CONNECT (Server.validateConnect).
func validateConnect(caps *mqtt.Capabilities, cl *mqtt.Client, pk packets.Packet) packets.Code {
	code := pk.ConnectValidate() // [MQTT-3.1.4-1] [MQTT-3.1.4-2]
	if code != packets.CodeSuccess {
		return code
	}
	switch {
	case cl.Properties.ProtocolVersion < 5 && !pk.Connect.Clean && pk.Connect.ClientIdentifier == "":
		return packets.ErrUnspecifiedError
	case cl.Properties.ProtocolVersion < caps.MinimumProtocolVersion:
		return packets.ErrUnsupportedProtocolVersion // [MQTT-3.1.2-2]
	case cl.Properties.Will.Qos > caps.MaximumQos:
		return packets.ErrQosNotSupported // [MQTT-3.2.2-12]
	case cl.Properties.Will.Retain && caps.RetainAvailable == 0x00:
		return packets.ErrRetainNotSupported // [MQTT-3.2.2-13]
	}
	return code
}

// end cleans up after a connection: it logs its end, closes it, reports the
// device offline when it was its last connection (ended), and drops its
// in-flight downlinks and subscriptions (unless a new connection took it
// over, which did that already).
func (b *Broker) end(c *conn) {
	defer b.wg.Done()
	level := slog.LevelWarn
	if c.err == nil || errors.Is(c.err, net.ErrClosed) || errors.Is(c.err, io.EOF) {
		level = slog.LevelDebug // the device or the broker closed it
	}
	b.mochiLog.Log(context.Background(), level, "mqtt: connection ended", "error", c.err, "client", c.cl.ID,
		"remote", c.cl.Net.Remote, "listener", c.listener)
	c.cl.Stop(c.err)
	b.mu.Lock()
	delete(b.conns, c)
	loggedIn, takenOver := c.loggedIn, c.takenOver
	b.mu.Unlock()
	if !loggedIn {
		return
	}
	atomic.AddInt64(&b.server.Info.ClientsConnected, -1)
	b.ended(c)
	if !takenOver {
		c.cl.ClearInflights()
		b.server.UnsubscribeClient(c.cl)
	}
}

// workers is an elastic pool of goroutines that do the connections' steps:
// a step goes to an idle worker, or to a new one when none is idle; a worker
// that finds maxIdle others idle exits.
//
// A worker's stack grows to 32 KiB on its first publish (mochi's frames hold
// packets by value; the hook decodes JSON and waits for the journal). An
// idle worker waits in park, whose frame holds stackBallast bytes, so that
// more than a quarter of that stack is in use while it waits and the
// garbage collector does not halve it, only for the next step to grow it
// again: that copying was a fifth of the CPU the workers spent on a publish
// with a 4 KiB ballast (stacks of 16 KiB kept), 3% with this one. The idle
// workers cost maxIdleWorkers × 32 KiB (2 MiB) in all.
type workers struct {
	do      func(*conn)
	jobs    chan *conn // unbuffered: taken by idle workers
	idle    atomic.Int32
	maxIdle int32
}

// maxIdleWorkers bounds the workers kept waiting for work: each holds a stack
// grown by the hooks (32 KiB, kept: stackBallast).
const maxIdleWorkers = 64

func newWorkers(do func(*conn)) *workers {
	return &workers{do: do, jobs: make(chan *conn), maxIdle: maxIdleWorkers}
}

// submit has a worker do c's step.
func (w *workers) submit(c *conn) {
	select {
	case w.jobs <- c:
	default:
		go w.run(c)
	}
}

func (w *workers) run(c *conn) {
	grow()
	for {
		w.do(c)
		if w.idle.Add(1) > w.maxIdle {
			w.idle.Add(-1)
			return
		}
		var ok bool
		c, ok = w.park()
		w.idle.Add(-1)
		if !ok {
			return
		}
	}
}

// stackBallast is the size of park's frame: over a quarter of the 32 KiB
// stack a worker grows to.
const stackBallast = 8<<10 + 256

// park waits for the next step, with a frame of stackBallast bytes.
//
//go:noinline
func (w *workers) park() (*conn, bool) {
	var ballast [stackBallast]byte
	c, ok := <-w.jobs
	keep(&ballast) // live across the wait, so the frame keeps it
	return c, ok
}

// keep uses b (so that the compiler keeps it on the caller's stack).
//
//go:noinline
func keep(b *[stackBallast]byte) { b[0] = 0 }

// stackFull is the stack a worker's steps need, about: mochi's frames, the
// hook's JSON decoding and the engine's delivery go past 16 KiB.
const stackFull = 20 << 10

// grow grows a new worker's stack to 32 KiB at once, while it holds one
// frame: growing it step by step under the hook's frames copied them four
// times, which cost more than the step itself (a burst of publishes that
// all wait for the journal starts new workers).
//
//go:noinline
func grow() {
	var b [stackFull]byte
	keepFull(&b)
}

//go:noinline
func keepFull(b *[stackFull]byte) { b[0] = 0 }

// stop ends the idle workers; nothing may be submitted afterwards.
func (w *workers) stop() { close(w.jobs) }

// sameClientID is the open connection of c's device with c's client ID, if
// any (a client ID names its device: checkConnect). b.mu is held.
func (b *Broker) sameClientID(c *conn) *conn {
	s := b.sessions[c.device]
	if s == nil {
		return nil
	}
	for _, o := range s.conns {
		if o != c && o.cl.ID == c.cl.ID && !o.takenOver {
			return o
		}
	}
	return nil
}
