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
//     confirmable (CON) request, or sent as a NON response to a NON one.
//   - Duplicate detection (RFC 7252 4.5): a CON request whose Message ID the
//     peer used within ExchangeLifetime gets the same answer again, without
//     calling the handler, for every method but GET and FETCH (safe, so a
//     duplicate is simply processed again, and Block2 blocks are never
//     cached). Entries expire on a timing wheel of one-second slots (O(1)
//     per entry, no scan) and their number is capped, the oldest dropped.
//   - Outgoing CON requests ([Server.Do]) with a Message ID sequence per
//     peer (kept for ExchangeLifetime after its last use), retransmitted
//     after ACK_TIMEOUT x a random factor, doubling, MaxRetransmit times;
//     the answer is a piggybacked response, or an empty ACK and then a
//     separate response (acknowledged when CON); an RST ends the request.
//   - Observations (RFC 7641, client side: [Server.Observe]): notifications,
//     CON or NON, go to a callback by token; a CON notification is
//     acknowledged only after the callback returns, so a caller that
//     journals a report in the callback acknowledges only what is durable.
//     A notification with an unknown token gets an RST.
//   - Block2 serving ([ServeBlock2]): one block per request, cut from a
//     io.ReaderAt, so nothing is buffered per transfer.
//
// Timers (retransmission, expiry) run on an injected [clock.Clock], so tests
// drive a day of protocol time in milliseconds. Malformed datagrams are
// dropped (an RST for a CON whose header could be read); nothing a peer
// sends grows memory without bound.
//
// Concurrency: a Server is safe for concurrent use. Handlers and observation
// callbacks run in reader goroutines, possibly two at once for the same
// peer; a slow one holds up its reader (so keep them short, or hand the
// work over). Per-peer state lives in a table sharded by peer address, each
// shard under its own lock.
package coapudp
