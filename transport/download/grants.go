package download

import (
	"hash/maphash"
	"sync"
)

// maxKeptGrants bounds the grants a Server keeps (Config.KeepGrants): one
// per device downloading, far more than the downloads cell budgets let run
// at once. Past it, grants are asked for on every request, as without
// KeepGrants.
const maxKeptGrants = 1 << 18

// revocationShards is the number of revocation counters: a revocation
// keeps an answer of Authorize given meanwhile from being kept for the
// devices of its shard only.
const revocationShards = 64

// grants is what a Server with Config.KeepGrants remembers: for each device,
// the grant Authorize last allowed, and the handle that names it when the
// device asked with one, until Revoke names the device. Its methods are
// safe for concurrent use.
//
// An answer of Authorize is kept only if no revocation of the device's
// shard happened while it was asked (gen, kept): an answer that raced with
// the end of its job may be served once, as before, but is never kept.
type grants struct {
	seed     maphash.Seed
	mu       sync.Mutex
	byDevice map[string]keptGrant
	byHandle map[string]string // handle -> device ID
	gen      [revocationShards]uint64
}

type keptGrant struct {
	g      Grant
	handle string // "" when kept from a token
}

func newGrants() *grants {
	return &grants{seed: maphash.MakeSeed(), byDevice: map[string]keptGrant{}, byHandle: map[string]string{}}
}

func (k *grants) shard(deviceID string) int {
	return int(maphash.String(k.seed, deviceID) % revocationShards)
}

// ofHandle returns the grant kept under handle h.
func (k *grants) ofHandle(h string) (Grant, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	dev, ok := k.byHandle[h]
	if !ok {
		return Grant{}, false
	}
	return k.byDevice[dev].g, true
}

// allowed reports whether g is kept. When it is not, gen is the revocation
// count of g's device to give keep after asking Authorize.
func (k *grants) allowed(g Grant) (ok bool, gen uint64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if kg, ok := k.byDevice[g.DeviceID]; ok && kg.g == g {
		return true, 0
	}
	return false, k.gen[k.shard(g.DeviceID)]
}

// keep remembers that Authorize allowed g (named by handle h, or "" for a
// token), unless a revocation of its device's shard came after allowed
// returned gen.
func (k *grants) keep(g Grant, h string, gen uint64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.gen[k.shard(g.DeviceID)] != gen {
		return
	}
	old, had := k.byDevice[g.DeviceID]
	if !had && len(k.byDevice) >= maxKeptGrants {
		return
	}
	if had && old.handle != "" && old.handle != h {
		delete(k.byHandle, old.handle)
	}
	k.byDevice[g.DeviceID] = keptGrant{g: g, handle: h}
	if h != "" {
		k.byHandle[h] = g.DeviceID
	}
}

// revoke forgets the grant kept for deviceID and keeps no answer being
// asked for its shard.
func (k *grants) revoke(deviceID string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.gen[k.shard(deviceID)]++
	if kg, ok := k.byDevice[deviceID]; ok {
		delete(k.byHandle, kg.handle)
		delete(k.byDevice, deviceID)
	}
}

// len returns the number of grants kept.
func (k *grants) len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.byDevice)
}
