package lwm2m

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"

	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport"
)

// Registrations kept across restarts (Config.Sessions).
//
// A device registers once and then only updates its registration, every
// half lifetime or so, which for an NB-IoT meter can be a day. A server that
// forgot its registrations in a restart could not send the recovered
// engine's requests to anyone until each device's next update (answered
// 4.04, then a new registration): the upgrades in flight would stall for up
// to a lifetime and fail their step deadlines. So each plain-CoAP
// registration is kept in the store (ID, address, the local address it came
// in on, lifetime, binding), written when it is created or its address,
// lifetime or binding change, and deleted when the device de-registers or
// its lifetime runs out. A restarted server reads them back: each device
// is registered again under its old ID, reachable at its last address, with a
// full lifetime counted from the restart; its own next update finds the
// registration it knows. Queue-mode devices are taken as asleep until they
// send something. Observations are not kept (the device machine observes
// again what its step needs).
//
// DTLS registrations are not kept: their security context dies with the
// process, so those devices must handshake and register again anyway.
const sessionTransport = "lwm2m"

// savedRegistration is a kept registration's stored form.
type savedRegistration struct {
	ID       string `json:"id"`
	Peer     string `json:"peer"`
	Lifetime int64  `json:"lifetime_s"`
	Queue    bool   `json:"queue,omitempty"`
}

func newRegistration(id, device, peer string, lifetime time.Duration, queue bool) *registration {
	reg := &registration{
		id: id, device: device, peer: peer, lifetime: lifetime,
		obs: map[string]*observation{},
	}
	reg.queue.Store(queue)
	reg.life, reg.end = context.WithCancel(context.Background())
	reg.mids.Store(uint32(uint16(message.RandMID())))
	return reg
}

// connOf is the conversation requests to reg's device go on (the latest
// one the device used).
func (s *Server) connOf(reg *registration) conv {
	s.mu.Lock()
	defer s.mu.Unlock()
	return reg.conn
}

// save keeps reg in Sessions. A failure is logged and costs only the
// survival of this registration across a restart.
func (s *Server) save(ctx context.Context, reg *registration) {
	if s.cfg.Sessions == nil || reg.secure {
		return
	}
	s.mu.Lock()
	v, err := json.Marshal(savedRegistration{
		ID: reg.id, Peer: reg.peer, Lifetime: int64(reg.lifetime / time.Second), Queue: reg.queue.Load(),
	})
	s.mu.Unlock()
	if err == nil {
		err = s.cfg.Sessions.PutSession(context.WithoutCancel(ctx), sessionTransport, reg.device, v)
	}
	if err != nil {
		s.log.Error("lwm2m: keeping the registration for a restart", "device", reg.device, "error", err)
	}
}

// forget removes reg's device from Sessions (it de-registered or expired).
func (s *Server) forget(reg *registration) {
	if s.cfg.Sessions == nil || reg.secure {
		return
	}
	if err := s.cfg.Sessions.DeleteSession(context.Background(), sessionTransport, reg.device); err != nil {
		s.log.Error("lwm2m: forgetting the kept registration", "device", reg.device, "error", err)
	}
}

// restore reads the kept registrations back (New). A record that does not
// decode, or whose device is gone or now has a PSK, is dropped with a log
// line; the device registers again when it next talks to the server. Only
// a store that cannot be read fails New.
func (s *Server) restore(ctx context.Context) error {
	if s.cfg.Sessions == nil {
		return nil
	}
	if s.udp == nil {
		return nil // no plain CoAP listener: nothing kept is usable
	}
	var drop []string
	err := s.cfg.Sessions.ListSessions(ctx, sessionTransport, func(device string, v []byte) error {
		reg, product, why := s.decodeSaved(ctx, device, v)
		if reg == nil {
			s.log.Warn("lwm2m: kept registration dropped", "device", device, "reason", why)
			drop = append(drop, device)
			return nil
		}
		s.byID[reg.id], s.byDev[device], s.byPeer[reg.peer] = reg, reg, reg
		s.cfg.Presence.Up(transport.ViaLwM2M, device, product)
		s.restored = append(s.restored, reg)
		return nil
	})
	if err != nil {
		return fmt.Errorf("lwm2m: reading the kept registrations: %w", err)
	}
	for _, d := range drop {
		if err := s.cfg.Sessions.DeleteSession(ctx, sessionTransport, d); err != nil {
			return fmt.Errorf("lwm2m: dropping the kept registration of %q: %w", d, err)
		}
	}
	if len(s.restored) > 0 {
		s.log.Info("lwm2m: registrations restored", "count", len(s.restored))
	}
	return nil
}

// decodeSaved checks one kept registration and returns it with its
// device's product; nil and the reason when it is not usable.
func (s *Server) decodeSaved(ctx context.Context, device string, v []byte) (reg *registration, product, why string) {
	var r savedRegistration
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, "", "does not decode: " + err.Error()
	}
	peer, perr := netip.ParseAddrPort(r.Peer)
	switch {
	case r.ID == "" || strings.ContainsAny(r.ID, "/?"):
		return nil, "", fmt.Sprintf("invalid registration ID %q", r.ID)
	case perr != nil || peer.Port() == 0 || peer.String() != r.Peer:
		return nil, "", fmt.Sprintf("invalid address %q", r.Peer)
	case r.Lifetime <= 0:
		return nil, "", fmt.Sprintf("invalid lifetime %d s", r.Lifetime)
	case s.byPeer[r.Peer] != nil:
		return nil, "", fmt.Sprintf("address %s is kept for device %q too", r.Peer, s.byPeer[r.Peer].device)
	case s.byID[r.ID] != nil:
		return nil, "", fmt.Sprintf("registration ID %q is kept for device %q too", r.ID, s.byID[r.ID].device)
	}
	product, err := s.admit(ctx, device, false)
	switch {
	case errors.Is(err, errRefused):
		return nil, "", err.Error()
	case err != nil:
		return nil, "", "looking the device up: " + err.Error()
	}
	reg = newRegistration(r.ID, device, r.Peer, time.Duration(r.Lifetime)*time.Second, r.Queue)
	reg.conn = udpConv{s.udp, peer}
	return reg, product, ""
}

// resume (Start) arms each restored registration's lifetime and starts
// its worker, which sends what the engine queued for it meanwhile. A
// queue-mode device is reported asleep: its requests wait for its next
// message.
func (s *Server) resume() {
	regs := s.restored
	s.restored = nil
	if len(regs) == 0 {
		return
	}
	for _, reg := range regs {
		reg.expiry = s.cfg.Clock.AfterFunc(reg.lifetime, func() { s.expire(reg) })
		s.ready(reg)
		if reg.queue.Load() {
			s.deliver(reg.device, &messages.DeviceInput{Kind: &messages.DeviceInput_Asleep{Asleep: &messages.Asleep{}}})
		}
	}
	s.log.Info("lwm2m: restored registrations resumed", "count", len(regs))
}
