package download

import (
	"hash/maphash"
	"sync"
)

// maxGrants bounds the devices a Server remembers a grant of: one per
// device with an LwM2M attempt under way or downloading, far more than the
// downloads cell budgets let run at once. Past it, a grant is not
// remembered: it is asked for on every request, as without KeepGrants,
// and its handle's record is deleted lazily (Check) or at the next start
// (SweepHandles).
const maxGrants = 1 << 20

// revocationShards is the number of revocation counters: a revocation
// keeps an answer of Authorize given meanwhile from being kept for the
// devices of its shard only.
const revocationShards = 64

// grants is what a Server remembers of each device's grant, in one entry
// per device, until the grant ends: that it handed out (Handle) or found
// running (SweepHandles) the handle whose record Revoke deletes (issued),
// and, with Config.KeepGrants, that Authorize allowed the grant (allowed),
// with the handle that named it. A served block is one lookup: by handle
// (byHandle, an index of the allowed entries named by a handle) or by
// device. Its methods are safe for concurrent use.
//
// An entry names one grant and ends with it: Revoke of its attempt, a
// refusal for good (Check, SweepHandles), a handle for another grant of
// the device (a device runs one job) all delete it; Revoke of another
// attempt of the device takes its authorization (no grant of the device
// holds), and so the entry too unless it holds a handle's record.
//
// An answer of Authorize is kept only if no revocation of the device's
// shard happened while it was asked (gen, keep): an answer that raced with
// the end of its job may be served once, as before, but is never kept.
type grants struct {
	seed     maphash.Seed
	mu       sync.Mutex
	byDevice map[string]*grantEntry
	byHandle map[string]*grantEntry // the allowed entries named by a handle, under it
	gen      [revocationShards]uint64
}

// grantEntry is a device's entry in grants: at least one of issued and
// allowed is set.
type grantEntry struct {
	g       Grant
	issued  bool   // g's handle has a record (Config.Handles) that Revoke deletes
	allowed bool   // Authorize allowed g (Config.KeepGrants): Check does not ask again
	handle  string // with allowed, the handle that named g, indexed in byHandle; "" for a token
}

func newGrants() *grants {
	return &grants{seed: maphash.MakeSeed(), byDevice: map[string]*grantEntry{}, byHandle: map[string]*grantEntry{}}
}

func (k *grants) shard(deviceID string) int {
	return int(maphash.String(k.seed, deviceID) % revocationShards)
}

// disallow takes e's authorization, and its handle out of the index.
func (k *grants) disallow(e *grantEntry) {
	if e.handle != "" {
		delete(k.byHandle, e.handle)
	}
	e.allowed, e.handle = false, ""
}

// ofHandle returns the allowed grant named by handle h.
func (k *grants) ofHandle(h string) (Grant, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if e, ok := k.byHandle[h]; ok {
		return e.g, true
	}
	return Grant{}, false
}

// allowed reports whether g is allowed. When it is not, gen is the
// revocation count of g's device to give keep after asking Authorize.
func (k *grants) allowed(g Grant) (ok bool, gen uint64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if e, ok := k.byDevice[g.DeviceID]; ok && e.allowed && e.g == g {
		return true, 0
	}
	return false, k.gen[k.shard(g.DeviceID)]
}

// keep remembers that Authorize allowed g (named by handle h, or "" for a
// token), unless a revocation of its device's shard came after allowed
// returned gen. It replaces the device's entry for another grant unless
// that one holds a handle's record (which then stays for Revoke to
// delete, and g is asked for again on its next request).
func (k *grants) keep(g Grant, h string, gen uint64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.gen[k.shard(g.DeviceID)] != gen {
		return
	}
	e, had := k.byDevice[g.DeviceID]
	switch {
	case !had && len(k.byDevice) >= maxGrants:
		return
	case !had:
		e = &grantEntry{g: g}
		k.byDevice[g.DeviceID] = e
	case e.g != g && e.issued:
		return
	case e.g != g:
		k.disallow(e)
		e.g = g
	}
	e.allowed = true
	if h != "" && e.handle != h {
		if e.handle != "" {
			delete(k.byHandle, e.handle)
		}
		e.handle = h
		k.byHandle[h] = e
	}
}

// issue remembers that g's handle has a record (Handle) and returns the
// device's grant it replaces (old), and whether that one's handle has a
// record to delete (ok): a device runs one job, so an entry for another
// grant of the device ends.
func (k *grants) issue(g Grant) (old Grant, ok bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e, had := k.byDevice[g.DeviceID]
	switch {
	case !had && len(k.byDevice) >= maxGrants:
		return Grant{}, false
	case !had:
		k.byDevice[g.DeviceID] = &grantEntry{g: g, issued: true}
		return Grant{}, false
	case e.g == g:
		e.issued = true
		return Grant{}, false
	}
	old, ok = e.g, e.issued
	k.disallow(e)
	*e = grantEntry{g: g, issued: true}
	return old, ok
}

// found remembers that g's handle has a record (SweepHandles) unless the
// device has an entry for another grant: that one is newer knowledge.
func (k *grants) found(g Grant) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e, had := k.byDevice[g.DeviceID]
	switch {
	case !had && len(k.byDevice) < maxGrants:
		k.byDevice[g.DeviceID] = &grantEntry{g: g, issued: true}
	case had && e.g == g:
		e.issued = true
	}
}

// drop forgets g, which Authorize refused for good, if it is its device's
// grant, and reports whether its handle has a record to delete. Like a
// revocation, it keeps no answer being asked for the device's shard.
func (k *grants) drop(g Grant) (issued bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.gen[k.shard(g.DeviceID)]++
	e, ok := k.byDevice[g.DeviceID]
	if !ok || e.g != g {
		return false
	}
	k.disallow(e)
	delete(k.byDevice, g.DeviceID)
	return e.issued
}

// revoke tells that attempt attempt of device deviceID's sub-task of task
// taskID ended: no grant of the device is allowed any more, and no answer
// being asked for its shard is kept. It returns the device's grant if it
// is of that attempt and its handle has a record to delete (ok); the entry
// of such a grant ends, and so does one for another grant without a
// record.
func (k *grants) revoke(taskID, deviceID string, attempt uint32) (g Grant, ok bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.gen[k.shard(deviceID)]++
	e, had := k.byDevice[deviceID]
	if !had {
		return Grant{}, false
	}
	k.disallow(e)
	ended := e.g.TaskID == taskID && e.g.Attempt == attempt
	if !ended && e.issued {
		return Grant{}, false
	}
	delete(k.byDevice, deviceID)
	return e.g, ended && e.issued
}

// len returns the number of devices whose grant is remembered.
func (k *grants) len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.byDevice)
}
