package transport

import (
	"maps"
	"sync"
)

// Via names the adapter that holds a device's session, for Presence.
type Via uint8

// The adapters that report presence. Each is one bit of a device's entry.
const (
	ViaMQTT  Via = 1 << iota // an MQTT connection (any of the device's)
	ViaLwM2M                 // an LwM2M registration (plain CoAP or DTLS)
	ViaSim                   // serve --simulate's in-process devices
)

// Presence counts the devices that have a session with this process, per
// product: a device is online while at least one adapter holds a session of
// it (an MQTT connection, an LwM2M registration that has not expired, been
// de-registered or replaced). It is what the fleet summary reads: its memory
// is one small entry per online device and one counter per product, and a
// count costs O(products).
//
// The adapters report a session when it starts (Up) and when it ends (Down),
// each under the lock that orders its own sessions, so that a Down of an
// old session can never land after the Up of its successor. Up and Down are
// idempotent for one adapter: a re-registration or a second MQTT
// connection of an online device changes nothing, and only the adapter's
// last session going away takes its bit off. Forget drops a device that was
// deleted from the registry, whatever its sessions; the adapters' later
// Downs for it are ignored.
//
// A restarted process starts empty: MQTT connections do not survive it,
// and the LwM2M adapter reports each registration it restores (Up). The
// zero value is not usable; a nil *Presence ignores every call and counts
// nothing. It is safe for concurrent use; it never calls out, so callers
// may hold their own locks.
type Presence struct {
	mu     sync.Mutex
	online map[string]online // by device ID
	counts map[string]int    // online devices by product ID
}

// online is an online device's entry.
type online struct {
	product string
	via     Via
}

// NewPresence returns an empty Presence.
func NewPresence() *Presence {
	return &Presence{online: map[string]online{}, counts: map[string]int{}}
}

// Up records that adapter via holds a session of device id, of product.
// A device already online through via keeps its entry (and its product:
// a device does not change product while connected).
func (p *Presence) Up(via Via, id, product string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.online[id]
	if !ok {
		e.product = product
		p.counts[product]++
	}
	e.via |= via
	p.online[id] = e
}

// Down records that adapter via holds no session of device id any more.
// The device goes offline when no adapter holds one.
func (p *Presence) Down(via Via, id string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.online[id]
	if !ok || e.via&via == 0 {
		return
	}
	e.via &^= via
	if e.via != 0 {
		p.online[id] = e
		return
	}
	p.dropLocked(id, e.product)
}

// Registered sets the product of the online devices among ids: they were
// just created in it. It is for sessions that start before their device is
// registered (the in-process simulator's devices; the real adapters admit
// registered devices only), which are counted under the product "" until
// then.
func (p *Presence) Registered(product string, ids []string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range ids {
		e, ok := p.online[id]
		if !ok || e.product == product {
			continue
		}
		p.dropLocked(id, e.product)
		e.product = product
		p.online[id] = e
		p.counts[product]++
	}
}

// Forget takes device id offline whatever its sessions: it was deleted.
func (p *Presence) Forget(id string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.online[id]; ok {
		p.dropLocked(id, e.product)
	}
}

func (p *Presence) dropLocked(id, product string) {
	delete(p.online, id)
	if p.counts[product] <= 1 {
		delete(p.counts, product)
	} else {
		p.counts[product]--
	}
}

// Online reports whether device id has a session.
func (p *Presence) Online(id string) bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.online[id]
	return ok
}

// Counts returns the number of online devices of each product that has
// any (a copy the caller owns).
func (p *Presence) Counts() map[string]int {
	if p == nil {
		return map[string]int{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.counts)
}
