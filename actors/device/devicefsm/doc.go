// Package devicefsm is the upgrade state machine of one device: one sub-task
// attempt (a job) at a time, for the three flows of the spec — MQTT (spec
// 2.10), LwM2M FOTA over object 5 (3.3, 3.5, 3.6) and LwM2M SOTA over PCP (4.9).
// It performs no I/O and reads no clock: time arrives inside each input, and
// deadlines are absolute times kept in State, so they survive restarts.
//
// Step(cfg, state, input) decides: it returns the new state, the events to
// journal (past tense, one batch) and the effects to run afterwards
// (downlinks, deadlines to arm, cell slot requests and releases, the outcome
// for the task). Evolve applies one event and is what recovery folds over the
// journal; Step builds its result by emitting events through Evolve, so the
// live state always equals the replayed one. Resume lists the work to redo
// after recovery. A State is a value owned by one actor: Step may reuse its
// slices, so callers keep only the returned State and never share one between
// goroutines.
//
// # Stages and deadlines
//
// A job walks WAIT_ONLINE (T1) → VERSION_QUERY (T2) → [LwM2M: RADIO_QUERY (T3)
// → CELL_QUERY (T4) → WAIT_PERMIT] → NOTIFIED (T5; MQTT T7) → DOWNLOADING (T6
// from the notification; MQTT T7) → DOWNLOADED (T8) → UPGRADING (T9) →
// [VERIFYING (T10)] and ends with JobFinished. Each stage with a deadline arms
// it with a new generation; DeadlineFired whose step or generation does not
// match the current stage is stale and ignored. Every timeout of spec 6.1 ends
// the job with its exact failure string (messages.ReasonText), except T3, which
// falls back to the cell-ID query, and T9, which first reads the version: a
// device that runs the target version after all succeeds, any other version
// fails with T9's string, and no answer within T10 fails with "Updating timeout
// and query device version for check timeout". Update Result 11 (deferred)
// after the Execute moves the job to UPGRADING: the result is waited for
// within T9, not T8.
//
// # Decisions (spec [P] items and silences)
//
//   - A StartJob whose job the machine cannot run (ValidatePackage: a PCP
//     package of more than 65,535 segments, a flow that does not carry the
//     task type) is rejected with "The upgrade cannot run on the device"
//     and its outcome, like any rejection, so its sub-task ends; only an
//     input without a task and attempt to report to is refused as invalid
//     (ErrInvalidInput). The API refuses such a task when it is created.
//   - Task conflict (6.2): a StartJob for another task while a job is active is
//     rejected at once with "Task Conflict"; a StartJob for the task already
//     running (any attempt) is a duplicate and ignored, and one for an attempt
//     of the task whose job ended last that is not newer than it is answered
//     with that job's outcome again instead of a second upgrade. The device is
//     "locked" from JobAccepted to JobFinished.
//   - "Device Abnormal is not online" is the rejection of a job on a device
//     marked abnormal (SetAbnormal: frozen, inactive); an offline device is not
//     abnormal, it is waited for (T1).
//   - A device that reports a version not in the package's non-empty source
//     list fails with "The current version is not a supported source version of
//     the package" (6.3 is silent on the string).
//   - Reachability: a downlink goes out when the device is online and, in queue
//     mode (binding UQ), awake; otherwise it waits in the outbox, journaled, and
//     goes out with the next uplink, within the step's own deadline (6.6): a
//     step's deadline counts from the moment the job enters it, not from the
//     delivery of its request, so a queue-mode device that sleeps longer than
//     T5 or T8 in the middle of an upgrade fails that step (raise those
//     timeouts for such fleets). Any
//     report proves the device online and awake. While a job waits for the
//     version, a plain LwM2M uplink re-sends the version query (6.6).
//   - An MQTT job that starts waiting for its device sends one version_query
//     at once, outside the outbox (and Resume repeats it): with an external
//     broker otafleet cannot see connections, so it probes; a device that
//     answers proves itself online, and its report starts the job. The
//     embedded broker delivers it only to a connected device.
//   - A new session (Connected: MQTT CONNECT, LwM2M Register) mid-job is a
//     reboot cue: FOTA re-observes /5/0/3 and /5/0/5; before the update it
//     reads object 5 of a device that acknowledged the URI, which resumes
//     its download by itself (a client refuses a write of /5/0/1 while it
//     downloads), and writes the URI again only when State 0 with Update
//     Result 0 says the device lost it, or when its write was never
//     acknowledged; after Execute the observations' first values carry the
//     outcome. A registration update (Uplink.registration_update) after the
//     Execute is a reboot cue too (spec 3.3): object 5 is read then, instead
//     of waiting for T9. PCP re-observes /19/0/0 and
//     repeats the idempotent request of its stage (before 0x16, the 0x14 with
//     the same version and check code, from which the device resumes). MQTT resends the upgrade
//     event only while no progress report has arrived (spec 7, question 10):
//     a device that reported progress got the event, and after a server
//     restart every MQTT device reconnects, so a broader rule would send
//     in-flight devices a second upgrade event. A device that reconnects
//     after reporting progress is asked for its version instead: its final
//     report may have been lost with the old session, and a version_report
//     showing the target version ends the job as a success.
//   - FOTA ignores object 5 reports between writing /5/0/1 and the device's
//     2.04 for that write: until then State and Update Result are the previous
//     attempt's values (a stale "2 Downloaded" must never trigger Execute).
//     Each attempt resets the device's firmware update state machine (an
//     empty write of /5/0/1, LwM2M 1.1 E.6) before its URI, while the device
//     has not acknowledged that URI: a client that a failed update left in
//     State 2 refuses a new URI otherwise; the reset's answer
//     (Lwm2mResponse.fota_reset) decides nothing. A refused write of the
//     URI fails with "Invalid URI", unless the device acknowledged the same
//     URI before in this job (it holds it: a client refuses a write while
//     it downloads); a refused Execute fails with "Firmware update failed";
//     Update Result 11 (deferred) keeps waiting within T9.
//   - A lost notification (issue 21): a FOTA device whose confirmable
//     notification of object 5 goes unacknowledged through all its
//     retransmissions ends that observation (RFC 7641 4.5) and tells
//     nothing more, so a job waiting for object 5 to change probes the
//     device before the stage's timeout: in NOTIFIED half way through T5
//     (once the device acknowledged the URI), in DOWNLOADING every sixth of
//     T6 (10 minutes), it reads object 5 and observes /5/0/3 and /5/0/5
//     again (a Noted event and a new deadline each time). The read's answer
//     moves the job on, or fails it with the device's own Update Result;
//     only a device that answers nothing meets T5 or T6. In NOTIFIED, a
//     device that has not acknowledged the URI is observed again and sent
//     the URI's writes again (the reset first, as on a new registration).
//   - Crash recovery of the Execute (FOTA /5/0/2, PCP 0x17), which is not
//     idempotent: after a restart in DOWNLOADED, Resume reads object 5 of a
//     FOTA device (State and Update Result in one answer, marked no_ack);
//     State 2 with Update Result 0 means the device never took the Execute
//     (it moves to State 3 before it answers one), so the Execute goes
//     again and T8 counts anew. A notification the device expects
//     acknowledged decides nothing here, even with both values: it may have
//     left the device before the Execute reached it
//     (stale_fota_notifications.txt). Nor does the answer to a read sent
//     before the last Execute (issue 22, crossed_object_reads.txt): a
//     probe's read in DOWNLOADING, or the read of an earlier recovery
//     while the store failed writes, may have been answered before that
//     Execute arrived. A read of object 5 carries the generation of the
//     stage that sent it (Lwm2mRead.tag), the transport echoes it
//     (DeviceInput.request_tag), and every Execute enters DOWNLOADED with
//     a new generation: only an answer tagged with the current one sends
//     the Execute again, so at most one per Execute sent. A new
//     registration in DOWNLOADED reads object 5 the
//     same way: the Execute may have gone to the old session, or Resume's
//     read to the address the device had before the restart. A PCP device has no such state to read: it answers a
//     0x13 with its old version before a 0x17 and after taking one until
//     it has installed, and PCP does not say how it answers a 0x14 then
//     (it may still hold the package and report it downloaded, 0x16). So a
//     PCP 0x17 goes at most once, and a lost one ends with T8 (the task's
//     retry policy runs the flow again). To keep the window in which a kill
//     loses it small, the 0x17 is not sent with the 0x16's acknowledgement
//     (the transport runs a registration's requests one at a time, so it
//     would sit journaled but unsent for a whole device round trip): the
//     0x16 enters DOWNLOADED with State.PcpExecuteDue and sends the
//     acknowledgement alone; the 0x17 goes, journaled as sent, when the
//     transport reports the acknowledgement's write answered
//     (Lwm2mResponse.pcp_code 0x16), on a new registration, or when the
//     stage's deadline (T2, a request's) fires. Resume re-arms that deadline
//     at 0 (at once): a 0x17 that was due never left the process.
//   - Version checks (project decision 6): FOTA reads /3/0/3 after Update
//     Result 1, PCP takes the version of 0x18, MQTT that of the progress report;
//     a different version fails with "Device version after upgrade does not
//     match the target version". skip_version_check turns the check into a
//     timeline note: FOTA still reads /3/0/3 after Update Result 1 and notes
//     the answer, and the job succeeds whatever it answers (another version,
//     an error such as 4.04, or nothing within T10); a failed first version
//     read (4.04) of such a job means "version unknown", and the upgrade goes
//     on. Without the option, a version read that times out after a
//     successful result fails with "Waiting for report device firmware
//     version timeout".
//   - MQTT result_code 0 with progress 100 and another version fails as a
//     version mismatch; result_code 3 succeeds only when the version equals the
//     target; other codes fail with the code's text (spec 2.6, one wording
//     shared with PCP's 4.6) and the device's description as detail. The
//     description of the MQTT report that ends a job, whatever its outcome,
//     is kept apart in JobFinished.device_description and the outcome. A
//     version_report showing the target version while the MQTT job waits for
//     its result ends it as a success.
//   - PCP 0x14 answered 0x03 (already latest) is checked with a 0x13: the
//     target version succeeds as "The current version is the same as the target
//     version", another fails with "Already at the latest version". A 0x15 or a
//     0x16 implies the 0x14 was accepted. 0x15 for another version, or before
//     the notification, is answered 0x80; past the last segment 0x81.
//     Repeated 0x15 requests journal nothing (the download is resumable and the
//     platform keeps no per-segment state).
//   - Stop (6.6) ends the job as Stopped; FOTA devices that hold a URI they
//     have not installed get an empty write of /5/0/1. Every end of a job
//     releases the cell slot asked for or held, revokes the download token
//     of an MQTT or FOTA device told its package's location (RevokeToken:
//     the download server forgets the grant it keeps) and cancels FOTA's
//     observations; PCP keeps /19/0/0 observed, since it also carries
//     business data.
//   - A cell grant the device does not wait for is handed straight back, so a
//     cell never keeps a slot for a device that will not use it.
//   - Progress reports older than the recorded progress, reports for stages
//     already left, and any report after the job ended are ignored (6.6).
//   - The download servers' DownloadServed and the transports'
//     DownloadOffered (the URI or URL and token a device was given) only
//     annotate the running job's timeline (a note, a DownloadOffered event);
//     for another job they are ignored.
package devicefsm
