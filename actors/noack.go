package actors

import (
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/otafleet/otafleet/messages"
)

// Reports marked no_ack (answers to the server's own requests,
// non-confirmable notifications) for an actor another node owns cross as
// RoutedInputs, with no reply: the transport delivering one need not wait
// for its journal write (Engine.Deliver), so a request and its reply (most
// of the requests of an LwM2M FOTA upgrade) become one message.
// What bounds them is credit: a node tells a peer at most maxNoAckTold of
// them that the peer has not yet reported stepped (NoAckCredit, sent for
// every creditEvery reports its actors stepped); past that, Deliver sends
// the next as a request and waits, as for any report, which holds back a
// device that floods (on one node, the wait for each step does).
//
// A report lost on the way (the connection between the nodes broke) is never
// credited; when a peer has had none told and no credit for noAckQuiet
// while its credit is spent, what is outstanding is taken for lost and its
// count starts again (a peer that leaves, or restarts, starts again too).
const (
	maxNoAckTold = 1024
	creditEvery  = 64
	noAckQuiet   = requestTimeout
)

// noAckPeer counts the no_ack reports told to one member and not yet
// credited; id is the member's (a node restarted at the same address is
// another member, which owes nothing).
type noAckPeer struct {
	id   string
	told int
	last time.Time // the last tell or credit (protocol clock)
}

// tellNoAck tells the no_ack report in to the owner of a, taking one credit
// of owner; it reports false, sending nothing, when owner has none left
// (force takes one anyway: a report passed on or forwarded, whose original
// sender got its credit back from this node).
func (n *node) tellNoAck(owner string, a Address, in *messages.DeviceInput, force bool) bool {
	return n.takeCredit(owner, force) && n.tell(owner, a, in, false, 0)
}

// takeCredit counts one no_ack report told to owner; without force, only
// while owner has credit left (else it counts a wait and reports false).
func (n *node) takeCredit(owner string, force bool) bool {
	id := n.memberID(owner)
	n.noAckMu.Lock()
	defer n.noAckMu.Unlock()
	p := n.noAckTold[owner]
	if p == nil || p.id != id {
		p = &noAckPeer{id: id}
		n.noAckTold[owner] = p
	}
	now := n.e.deps.Clock.Now()
	if p.told >= maxNoAckTold && !force {
		if now.Sub(p.last) < noAckQuiet {
			n.e.metrics.noAckWaited.Inc()
			return false
		}
		p.told = 0 // lost on the way
	}
	p.told++
	p.last = now
	return true
}

// credited takes k credits back from peer (its NoAckCredit).
func (n *node) credited(peer string, k int) {
	n.noAckMu.Lock()
	defer n.noAckMu.Unlock()
	if p := n.noAckTold[peer]; p != nil {
		p.told = max(0, p.told-k)
		p.last = n.e.deps.Clock.Now()
	}
}

// stepped counts one no_ack report told by peer as stepped here (or passed
// on), and sends peer its credit every creditEvery.
func (n *node) stepped(peer string) {
	if peer == "" {
		return
	}
	n.noAckMu.Lock()
	n.noAckOwed[peer]++
	k := n.noAckOwed[peer]
	if k < creditEvery {
		n.noAckMu.Unlock()
		return
	}
	delete(n.noAckOwed, peer)
	n.noAckMu.Unlock()
	if n.isMember(peer) {
		n.noteSent(peer, false)
		n.e.system.Root.Send(actor.NewPID(peer, directoryActor), &messages.NoAckCredit{From: n.me(), Reports: uint32(k)})
	}
}

// forgetNoAck drops the counts of the peers that are no longer members (or
// are other members at the same address now).
func (n *node) forgetNoAck(ids map[string]string) {
	n.noAckMu.Lock()
	defer n.noAckMu.Unlock()
	for addr, p := range n.noAckTold {
		if id, ok := ids[addr]; !ok || id != p.id {
			delete(n.noAckTold, addr)
		}
	}
	for addr := range n.noAckOwed {
		if _, ok := ids[addr]; !ok {
			delete(n.noAckOwed, addr)
		}
	}
}

// isNoAckReport reports whether msg is a device report marked no_ack.
func isNoAckReport(msg any) (*messages.DeviceInput, bool) {
	in, ok := msg.(*messages.DeviceInput)
	return in, ok && in.GetNoAck() && in.IsReport()
}
