// Package coapudp is the server side of CoAP over UDP (RFC 7252) for a
// large fleet of mostly idle devices: one socket, a fixed number of reader
// goroutines and no goroutine or connection object per peer. It exists
// because go-coap's UDP server keeps, for every peer, a connection with its
// own goroutine, maps and a cache of every piggybacked response for
// EXCHANGE_LIFETIME that it scans on every datagram; this package keeps
// per-peer state only while something is in flight. It uses go-coap's
// message codec (udp/coder, message) for every encode and decode.
//
// What it does:
//
//   - Incoming requests go to one [Handler], called in the reader goroutine
//     that read the datagram; its answer is piggybacked on the ACK of a
//     confirmable (CON) request, or sent as a NON response to a NON one. A
//     handler that must wait (for the journal) defers the answer
//     ([ResponseWriter.Defer]) and sends it later from its own goroutine,
//     still piggybacked (every client understands that, unlike a separate
//     response); the reader moves on meanwhile.
//   - Duplicate detection (RFC 7252 4.5): a CON request whose Message ID the
//     peer used within ExchangeLifetime gets the same answer again, without
//     calling the handler, for every method but GET and FETCH (safe, so a
//     duplicate is simply processed again, and Block2 blocks are never
//     cached). A copy of a NON message (request or notification) seen within
//     NonLifetime (NON_LIFETIME, 145 s) is dropped. Entries expire on a timing wheel of one-second slots (O(1)
//     per entry, no scan) and their number is capped, the oldest dropped.
//   - Outgoing CON requests ([Server.Do]) with a Message ID sequence per
//     peer (kept for ExchangeLifetime after its last use), retransmitted
//     after ACK_TIMEOUT x a random factor, doubling, MaxRetransmit times;
//     the answer is a piggybacked response, or an empty ACK and then a
//     separate response (acknowledged when CON); an RST ends the request.
//   - Observations (RFC 7641, client side: [Server.Observe]): notifications,
//     CON or NON, go to a callback by token ([NotifyFunc]); a CON
//     notification is acknowledged only when the callback calls the ack it
//     was given, which it may do later from another goroutine: a caller
//     that journals a report acknowledges only what is durable, without
//     holding a reader during the fsync (a copy the peer retransmits
//     meanwhile is dropped; once acknowledged, a copy gets the same ACK).
//     A notification with an unknown token gets an RST.
//   - Block2 serving ([ServeBlock2]): one block per request, cut from a
//     io.ReaderAt, so nothing is buffered per transfer.
//
// Timers (retransmission, expiry) run on an injected [clock.Clock], so tests
// drive a day of protocol time in milliseconds. Malformed datagrams are
// dropped (an RST for a CON whose header could be read); nothing a peer
// sends grows memory without bound.
//
// Concurrency: a Server is safe for concurrent use. Handlers, observation
// callbacks and Config.Unmatched run in reader goroutines, one at a time
// per peer: a lock striped by peer address (1,024 stripes) is held around
// each call, so two datagrams of one peer read by two readers are handled
// one after the other, never at once. It keeps mutual exclusion, not
// arrival order: which of two datagrams of a peer read at nearly the same
// time is handled first is not defined, as UDP itself does not keep order;
// order that matters is in the messages (Observe sequence numbers, RFC
// 7641 3.4; a client's one outstanding CON request, RFC 7252 4.7). A slow
// call holds up its reader, its peer and the peers of its stripe, so
// calls must be short: one that waits (for the journal, for the peer)
// defers its answer or ack instead. The answers to outgoing requests
// (ACKs, RSTs, separate responses) take no stripe, so waiting for a
// request to the same peer never deadlocks on it. Per-peer state lives in
// a table sharded by peer address, each shard under its own lock.
package coapudp
