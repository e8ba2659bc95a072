package coapudp

// wheel is a timing wheel of one-second slots: each key is filed under the
// second it expires in, and advancing the wheel visits only the slots of
// the seconds that went by, so filing and expiring a key is O(1) and no
// tick scans the keys that are not due. A key's owner keeps its real
// expiry and checks it when the key comes up (lazy deletion): a key that
// was refreshed or removed since it was filed is simply skipped. A wheel
// is not safe for concurrent use; its shard's lock guards it.
type wheel[K comparable] struct {
	slots [][]K
	now   int64 // the last second advanced to; slots of later seconds are pending
	n     int   // keys filed and not yet visited
}

// newWheel returns a wheel for keys that expire at most span seconds after
// the current second, starting at second now.
func newWheel[K comparable](span int64, now int64) *wheel[K] {
	return &wheel[K]{slots: make([][]K, span+2), now: now}
}

// add files k under second at, which is clamped to (now, now+span].
func (w *wheel[K]) add(k K, at int64) {
	span := int64(len(w.slots) - 1)
	at = min(max(at, w.now+1), w.now+span)
	i := at % int64(len(w.slots))
	w.slots[i] = append(w.slots[i], k)
	w.n++
}

// advance visits, in second order, every key filed under a second up to
// and including now, calling due for each.
func (w *wheel[K]) advance(now int64, due func(K)) {
	if now <= w.now {
		return
	}
	// A jump longer than the wheel visits every slot once.
	from := max(w.now+1, now-int64(len(w.slots))+1)
	for sec := from; sec <= now; sec++ {
		i := sec % int64(len(w.slots))
		keys := w.slots[i]
		w.slots[i] = keys[:0:0]
		w.n -= len(keys)
		for _, k := range keys {
			due(k)
		}
	}
	w.now = now
}

// oldest removes and returns the key filed under the earliest pending
// second, false when the wheel is empty.
func (w *wheel[K]) oldest() (K, bool) {
	var zero K
	if w.n == 0 {
		return zero, false
	}
	for d := int64(1); d < int64(len(w.slots)); d++ {
		i := (w.now + d) % int64(len(w.slots))
		if keys := w.slots[i]; len(keys) > 0 {
			k := keys[0]
			w.slots[i] = keys[1:]
			w.n--
			return k, true
		}
	}
	return zero, false
}

// len is the number of keys filed and not yet visited.
func (w *wheel[K]) len() int { return w.n }
