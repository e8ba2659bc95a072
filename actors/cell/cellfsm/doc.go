// Package cellfsm is the radio-budget state machine of one cell actor: it
// admits devices of one radio cell into upgrade slots according to their
// coverage (spec section 1, project decision 1).
//
// A cell lends out Config.Budget units (default 50). A device asking for a
// slot (messages.RequestPermit) is graded by Classify from its RSRP and SINR
// and costs Cost units: 1 for good coverage, 5 for medium, 50 for poor or out
// of range, 5 when only its cell ID is known. Every request joins the cell's
// FIFO queue (event PermitQueued, carrying level, cost and job); the head of the
// queue is granted (event PermitGrantedToDevice, effect CellEffect.grant with
// a messages.PermitGranted for the device actor) while the units in use plus
// its cost fit in the budget. Nobody overtakes the head, so a poor device at
// the head waits until the cell is empty, everyone behind it waits too, and
// it is never starved. A device gives its units back, or leaves the queue,
// with messages.ReleasePermit (event PermitReturned), after which the queue
// is admitted again.
//
// The package is pure: it performs no I/O, reads no clock and keeps no
// package state. Step decides and then applies its own events with Evolve,
// so the live state always equals the fold of Evolve over the journaled
// events; recovery is New(cellID), the fold, then Resume (and Admit). Step and
// Evolve may modify the map and slice of the State they are given, so callers
// keep only the returned State. A State is not safe for concurrent use; one
// cell actor owns it.
//
// Decisions (where the spec marks [P] or is silent):
//
//   - The budget is shared by all coverage levels and all tasks of the cell
//     (project decision 1), not one semaphore per (cell, level) as spec 1.3
//     proposed and not the holder-count rule sketched in ARCHITECTURE.md.
//   - Boundaries are lo <= x < hi; the ceilings RSRPMax (-44 dBm) and SINRMax
//     (30 dB) are inclusive upper limits of the good range. A value above a
//     ceiling or below the poor range is outside all ranges and is POOR
//     (project decision 7). The effective level is the weaker of the two.
//   - Otherwise a missing RSRP or SINR (or cell_only set) makes the device
//     CELL_ONLY: the radio read did not give both values, so only the cell
//     is known. A present value outside all ranges wins over a missing one
//     (spec 3.2 as amended by issue 20): a positive "dBm" RSRP without SINR
//     is POOR, not CELL_ONLY. Classify is the one place of this rule; the
//     device machine sends every value it has.
//   - An unspecified or unknown level costs as much as POOR.
//   - Config.Validate requires strictly increasing lower bounds per metric
//     (poor < medium < good <= ceiling), Budget > 0 and every cost in
//     1..Budget; Step and Admit refuse an invalid config with ErrInvalidConfig.
//   - The cell ID is the actor's identity and is given to New; no event
//     carries it. Step refuses a state without one (ErrNoCell, e.g. the zero
//     State) and an input whose cell_id is empty or another cell's
//     (ErrInvalidInput). An empty device_id or an input without kind is
//     ErrInvalidInput.
//   - A request names its job (task and attempt, Job). A repeat of the same
//     job's request from a device that holds units repeats the grant effect
//     and journals nothing (a restarted device asking again); its original
//     level and cost stay. A repeat from a device already waiting for that
//     job is ignored: it keeps its place, level and cost.
//   - A request for a new job is costed afresh, so a slot never outlives its
//     job at the old job's cost. A waiting device takes the new level and
//     cost in its place. A holder whose new cost is at most what it holds
//     keeps its slot at the new cost at once (its grant effect goes out
//     again, and units it frees may admit the queue). A holder whose new cost
//     is higher keeps what it holds and joins the tail of the queue for the
//     difference: it is granted, at the new cost, when it is the head and
//     the difference fits, so the budget is never exceeded and nobody behind
//     the head overtakes (issue 20, item 13). Until then Resume sends it no
//     grant.
//   - A release from a holder returns its units (and withdraws its request
//     for a new job, if any); a release from a waiting device (its job was
//     stopped while waiting) takes it out of the queue, after which the new
//     head may fit. A release from a device the cell does not know is
//     ignored: no error, no events, no effects.
//   - Events carry the cost, so replay keeps the cost a device was queued
//     and admitted with even if the configured costs changed between
//     restarts. A journaled cost above the current budget counts as the whole
//     budget when admitting: that device is admitted when the cell is empty
//     and upgrades alone (its full cost stays in InUse, so no one else fits
//     until it leaves). Check accepts a single holder above the budget for
//     that reason.
//   - If the budget is lowered across a restart, holders admitted under the
//     old budget keep their units; no one is admitted until the units in use
//     fit the new budget again (Check reports such a state as over budget).
//     If it is raised, Admit lets waiting heads in right after recovery;
//     otherwise the next request or release would.
//   - Resume re-sends the grant of every holder, in device-ID order; device
//     actors ignore grants they are not waiting for. Resume takes no config
//     and grants no one new; Admit does that with events.
//   - Input times are not interpreted; every event carries the input's
//     at_unix_nano (Admit's events carry its atUnixNano).
package cellfsm
