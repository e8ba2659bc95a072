// Package taskfsm is the pure state machine of one batch upgrade task (spec
// sections 5 and 6): its targets, schedule time, daily execution window,
// retry policy, stop, on-demand retry, counters and derived status. The task
// actor (identity: task ID) feeds it inputs and carries out what it returns.
//
// It performs no I/O and reads no clock: time arrives inside each input
// (at_unix_nano). Step decides (validates an input, computes events and
// effects) and applies its events with Evolve, so the live State always equals
// the fold of Evolve over the journaled events; Resume re-derives the pending
// work after such a replay. The caller persists Result.Events before it runs
// Result.Effects. The package is not safe for concurrent use on one State:
// one actor owns a State, and Step and Evolve modify its slices and map in
// place, so only the State they return may be used afterwards.
//
// A task fans out into one sub-task per target device. A sub-task is WAITING,
// PROCESSING (a StartJob was sent to its device actor), SUCCESS, FAIL,
// FAIL_WAIT_RETRY or STOPPED; each start is a new attempt (1, 2, ...), and the
// device actor reports how the attempt ended with ReportOutcome. The task
// keeps at most one timer, the wake (DeadlineFired step WakeStep), armed at
// the earliest of schedule_time, the next window opening and the earliest
// retry time, each only while something waits for it. The progress counters
// are kept incrementally, so Progress and Status cost O(1); only Create,
// Stop, Retry, Resume and the start of many sub-tasks touch many sub-tasks.
//
// This package is the one place of a task's rules and limits. Step checks
// every input; the checks of a CreateTask that an API must answer at once
// are exported as Config.ValidatePolicy and Config.ValidateDeviceCount,
// which Step itself runs, so the API and the machine cannot disagree. Their
// errors are *FieldError values (the field and the problem, e.g.
// "policy.retry_count: 6, at most 5"), which wrap ErrInvalidInput. Whether a
// task status is final is messages.TaskStatus.Final.
//
// Decisions (where the spec is silent or marked [P]):
//
//   - A schedule_time in the past (or 0) means "start now". A schedule_time
//     later than the create time plus Config.ScheduleHorizon (7 days) is
//     rejected.
//   - A retry_count needs a retry_interval_minutes and the other way round.
//     An API whose interval is optional fills DefaultRetryIntervalMinutes
//     when only the count is given.
//   - The execution window (project decision 3) is [start_minute, end_minute)
//     of local time of day in its time zone ("" means UTC; "Local", in any
//     case, is rejected because it differs between machines); end before
//     start spans midnight; start equal to end is rejected (leave the window
//     unset for "any time").
//     Zones come from the embedded tzdata, so they load the same everywhere.
//     Across daylight-saving changes NextOpen is exact: an opening inside a
//     skipped hour happens at the transition, one inside a repeated hour at its
//     first occurrence.
//   - Sub-tasks start only when schedule_time has come, the window is open
//     and MaxInFlight allows. Devices already in flight finish when the
//     window closes. A retry that falls due outside the window stays
//     FAIL_WAIT_RETRY until the next opening.
//   - Start order: WAITING sub-tasks first, in target order (on-demand
//     retried ones join the end of that queue), then due retries in retry_at
//     order. The order matters only when MaxInFlight is set.
//   - MaxInFlight defaults to 0 = unlimited: a device may wait up to 24 h to
//     come online, and pacing the radio is the per-cell budget's job, not the
//     task's.
//   - Targets are device_ids followed by group_members, de-duplicated with
//     the first occurrence's order kept. Expanding group_ids into
//     group_members is the caller's job; group_ids are only recorded.
//     MaxTargets caps the explicit device_ids (spec 5.1); group members obey
//     the same per-ID rules but are not counted against it.
//   - retry_count automatic retries per sub-task (attempts = 1 + retry_count):
//     a FAIL outcome becomes FAIL_WAIT_RETRY with retry_at = outcome time +
//     retry_interval while retries are left, else FAIL. A Task Conflict
//     failure is retried like any other (spec 6.2). Each retry is a new
//     StartJob with the next attempt number; the device actor re-runs the
//     whole flow (spec 6.6).
//   - An outcome whose attempt is not the sub-task's current one, or for a
//     sub-task that is not PROCESSING, is stale or a duplicate and ignored.
//     An outcome for a device that is not a target, or naming another task,
//     is an error. Its reason, detail and result_code are recorded as
//     reported.
//   - Stop is allowed while the task is WAITING or PROCESSING. WAITING and
//     FAIL_WAIT_RETRY sub-tasks stop at once (reason REASON_STOPPED);
//     PROCESSING ones get StopJob and the task is STOPPING until each
//     reports. Outcomes during STOPPING are recorded as reported (a late
//     SUCCESS stays SUCCESS); a FAIL no longer schedules a retry. After the
//     stop no StartJob is ever sent, not even by Resume, and the pending
//     wake is dropped (a later fire is stale). Stopping only some targets
//     (spec 5.4 "targets") is not supported: StopTask has no such field.
//   - On-demand retry is allowed while the task is PROCESSING, FAIL or
//     PARTIAL_SUCCESS (spec 5.4), never after a stop. It re-runs FAIL,
//     FAIL_WAIT_RETRY and STOPPED sub-tasks, all or the listed ones (a listed
//     device that is not a target is an error; one in another status is
//     skipped). FAIL and STOPPED ones get a fresh automatic-retry budget; a
//     FAIL_WAIT_RETRY one keeps the retries it used, so its re-run is the
//     pending retry brought forward and never an extra attempt (attempts
//     stay within 1 + retry_count). Nothing to retry is
//     ErrInvalidTransition. RetryRequested journals the re-run devices, or
//     no IDs for "all", with keep_pending_retries set (a journal written
//     before that field reset every re-run sub-task's budget, and replays so).
//   - Status derivation (spec 5.5 [P]): WAITING until the first sub-task
//     has started; after a stop STOPPING while any sub-task is PROCESSING,
//     then STOPPED; otherwise PROCESSING while any is WAITING, PROCESSING or
//     FAIL_WAIT_RETRY; then SUCCESS if all succeeded, FAIL if all failed,
//     else PARTIAL_SUCCESS (this includes a sub-task its device reported
//     STOPPED without a task stop).
//   - Timer: a new WakeArmed (next generation) is journaled only when the
//     desired wake time changes, or when the armed wake has fired; a fired
//     wake with nothing left to wait for is journaled as WakeArmed with
//     at_unix_nano 0, so Resume does not re-arm it. A DeadlineFired whose
//     step or generation does not match, or when no wake is pending, is stale
//     and ignored. The task does not wake for MaxInFlight: a finishing
//     sub-task starts the next ones.
//   - Every input must carry at_unix_nano > 0. StartJob effects share the
//     task's Package message: receivers treat it as read-only.
package taskfsm
