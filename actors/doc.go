// Package actors is the engine: one protoactor-go actor per device, per radio
// cell and per batch task, each a thin shell around its pure state machine
// (devicefsm, cellfsm, taskfsm).
//
// For every input a shell runs Step, appends the resulting events to its
// journal stream in one batch (persistence.EventStore; concurrent actors share
// group commits), keeps the new state only once the batch is written, and
// then carries out the effects. The batch is synced before the effects run
// when someone waits for it (a device report the device expects
// acknowledged, acknowledged only once durable; an API command) or when one
// of its events must be durable first (messages' MustSync rules: a stage
// that sends a package URI or an Execute, a task's sub-task outcome, a stop,
// ...); the others (presence, bytes-served notes, a version query, a cell
// grant, a device's job outcome, which its task's synced step makes
// durable, a report marked no_ack: the answer to a request of the server's
// own, ...) are written unsynced and become durable with the next synced
// append of any actor, so a crash can only take an actor back a few
// re-derivable steps. A cell or a task steps the inputs of other actors that
// its mailbox already holds one after the other and appends all their events
// in one batch (synced if one of them must be), then keeps the last state
// and runs their effects in order: a burst of permit requests or sub-task
// outcomes costs one write, and no effect runs before its events are
// written (issue 21). The effects are downlinks through the transport
// seam (transport.Downlinks), messages to other actors by address, and
// deadlines as timers of the injected clock that deliver DeadlineFired with
// the step and generation they were armed for (a stale one is ignored by the
// machine). protoactor's SetReceiveTimeout is not used.
//
// Actors are reached only by Address (kind + ID) through one small directory,
// which spawns an actor on demand and recovers it from its snapshot and
// journal. Idle device and cell actors, and finished tasks, passivate after
// Config.PassivateAfter; the directory guarantees that no message sent to a
// passivating actor is lost and that no two actors ever run for one address.
//
// In a cluster (Config.Cluster, cluster.go) every node runs this engine over
// one shared store (PostgreSQL). Membership comes from etcd through
// protoactor's etcd cluster provider; the owner of an address is the
// rendezvous hash over the members (protoactor's, the one its disthash
// identity lookup uses), and the directory is the identity lookup: an input
// for an actor another node owns goes as a protobuf envelope over protoactor
// remote to that node's directory actor, which delivers it to its local
// actor; API asks and device reports become requests answered from the
// owner's actors and read models. protoactor's grain activation
// (cluster.Get, its PID cache) is not used: it loses messages to a moved or
// passivated grain through stale cached PIDs and cannot keep the
// directory's guarantees. When the membership changes, each node passivates
// the actors it no longer owns (what waited for them goes to the owner) and
// recovers the active streams it now owns, as Start does. A device input
// delivered by a node's transport carries that node's address (its route);
// the device actor sends its downlinks there, through that node's edge actor,
// or to every node when it does not know the route yet. The nodes' views of
// the membership differ for a moment, so one actor may run on two nodes:
// the store's expected-sequence append fences the second writer
// (persistence.ErrConflict), which stops and hands what it holds to its
// successor, which recovers from the store on whichever node owns it.
//
// Recovery (Engine.Start) re-activates every stream with its active mark set —
// tasks not finished, cells with holders or waiters, devices with a job — and
// each calls its machine's Resume: deadlines come back at their absolute
// times, idempotent requests are repeated, and nothing that was done (an
// Execute, an MQTT upgrade event) is done again. Cross-actor consistency after
// a crash is restored by idempotent repetition: a cell re-grants its holders
// and devices hand back grants they do not want; a task re-sends StartJob for
// running sub-tasks and devices answer a finished job with its outcome.
//
// A write that fails leaves the actor's state untouched and runs no effect.
// When another activation moved the stream under the write
// (persistence.ErrConflict) the actor is fenced: it stops, and the input at
// hand and all later ones go to its successor, which recovers from the
// store. When the store is unavailable (persistence.ErrUnavailable: its
// database is down or does not answer, and the write may or may not have
// been made), the actor recovers again from the store, retrying with a backoff of
// clock time (100 ms doubling to 5 s) for as long as it cannot read it; a
// recovery the store's unavailability fails is retried the same way.
// Meanwhile commands, queries and device reports get the error (a report is
// not acknowledged, so the device sends it again), and the inputs of other
// actors and timers wait, to be stepped in order on the state recovered:
// a write that was made after all is read back, never made twice. Any other
// failed write stops the actor so that its successor rebuilds from what is
// durable; an actor whose journal does not decode refuses all input and
// reports the corrupt key. A refused StartJob still ends its sub-task: the
// device answers it with a failed outcome (devicefsm.Refused), so no
// sub-task waits forever for a device that will never run it.
package actors
