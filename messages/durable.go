package messages

// The journal's sync rules: which events must be durable (synced) before the
// effects of the step that emitted them run, and which may be written
// unsynced (persistence.Append.NoSync), to become durable with the next
// synced write of any actor. A crash may lose a suffix of the unsynced
// writes, never a write without those before it; so a lost event takes the
// actor back to the state before it, from which Resume (and the inputs that
// follow: a re-sent StartJob, a re-granted permit, a fired deadline) redoes
// the work. An event may be unsynced only if that is harmless although its
// step's effects already ran: its effects are idempotent requests that
// Resume repeats (reads, queries, permit requests), or it has none (notes,
// presence), or each of them leads to a synced append later in the log.
// Every event that precedes an effect the world cannot see twice is synced:
// a package URI or upgrade command that starts a download (and with it the
// cell grant it rests on, see CellEvent.MustSync), an Execute or PCP 0x17, a
// stop, a task's starts and ends, a queued or flushed downlink.
//
// A device's JobFinished, other than a stop's, is unsynced (issue 21: one
// synced commit less per upgrade). The effects of its step are the outcome
// for the task, the cell slot's return, the download token's revocation and
// the cancel of FOTA's observations. The first leads to the task's synced
// SubtaskFinished, later in the log, so JobFinished is durable before its
// task counts the outcome; the cell's return and the deletion of the
// download handle are appends later in the log too. If a crash takes
// JobFinished, it takes everything the device, its cell and its task did
// after it: the device recovers in the job's last durable stage, its task
// still has the sub-task PROCESSING, and the device's Resume asks again what
// the stage waits for (the version, object 5) or re-arms the stage's past
// deadline, which fires at once, so the job ends again. A report that ends a
// job and that the device expects acknowledged (a CON notification, an MQTT
// QoS 1 report, a PCP 0x18) is synced by the shell anyway: only an answer to
// the server's own request (a version read), a non-confirmable notification
// or a deadline ends a job unsynced. A stop stays synced: it may reset a
// FOTA device's object 5, after which a DOWNLOADED stage recovered without
// the stop could read State 2 and send the Execute again (a lost reset). Nor
// does a lost JobFinished make the device refuse another task wrongly: that
// task's SubtaskStarted is synced, so it survives a crash that took
// JobFinished only if it came before it in the log. That task started its
// sub-task while the job ran, and Task Conflict (spec 6.2) is what the
// device answers in the run where that StartJob arrives before the job's
// end; a task created, or a sub-task started, after the end finds the end
// durable. (The kill -9 process test's devices "upgraded twice" for which
// this was once reverted were FOTA devices sent a second Execute on a
// State 2 notification that had crossed the first, unrelated to the
// outcome's sync: devicefsm's stale_fota_notifications.txt. The actors'
// crash tests lose the outcome at every journal write, with the simulated
// devices restarted from their state file too.)
//
// These rules are per event; the actors' shell adds one per input: the step of
// an input someone waits for (a device report the device expects
// acknowledged, which the transport acknowledges once journaled, or an API
// command) is synced whatever its events. A report marked no_ack (an answer
// to the server's own request, a non-confirmable notification) is not: the
// device is acknowledged nothing on it and never sends it again, so only
// these rules decide.

// MustSync reports whether ev must be durable before its step's effects run
// (see the rules above).
func (x *DeviceEvent) MustSync() bool {
	switch k := x.GetKind().(type) {
	case *DeviceEvent_PresenceChanged, // re-established by the device's next session
		*DeviceEvent_Noted,              // a timeline note: bytes served, an ignored report
		*DeviceEvent_ProgressRecorded,   // superseded by the next progress or the result
		*DeviceEvent_DownloadOffered,    // the offered URI, for the timeline
		*DeviceEvent_VersionRecorded,    // asked again by the job's version query
		*DeviceEvent_RadioRecorded,      // asked again by the job's radio query
		*DeviceEvent_PermitRequested,    // asked again by Resume while waiting for a permit
		*DeviceEvent_PermitReleased,     // the cell re-grants on recovery; the device hands it back
		*DeviceEvent_PackageUriAccepted, // without it Resume resets the device and writes the URI again
		*DeviceEvent_JobAccepted,        // the task re-sends StartJob on recovery
		*DeviceEvent_JobRejected:        // likewise; the refusal is decided again
		return false
	case *DeviceEvent_JobFinished:
		// The task's synced SubtaskFinished makes it durable first (see
		// above); a stop may have reset object 5.
		return k.JobFinished.GetStatus() == SubtaskStatus_SUBTASK_STATUS_STOPPED
	case *DeviceEvent_StageEntered:
		return k.StageEntered.GetStage().startsDeviceWork()
	}
	return true
}

// startsDeviceWork reports whether stage is one of a device at work on the
// server's word, whose entry sends (or may send) a downlink that makes the
// device act: a package URI or upgrade command and the download under way
// (NOTIFIED, DOWNLOADING), an Execute or PCP 0x17 (DOWNLOADED, UPGRADING).
// The other stages only ask (version, radio, cell, a permit, the version
// after an upgrade) or wait.
func (s Stage) startsDeviceWork() bool {
	switch s {
	case Stage_STAGE_WAIT_ONLINE, Stage_STAGE_VERSION_QUERY, Stage_STAGE_RADIO_QUERY,
		Stage_STAGE_CELL_QUERY, Stage_STAGE_WAIT_PERMIT, Stage_STAGE_VERIFYING:
		return false
	}
	return true
}

// MustSync reports whether ev must be durable before its step's effects run
// (see the rules above): no cell event must. A grant must be durable before
// the device acts on it, and it is: the cell's append returns before the
// grant reaches the device actor, whose step that tells the device (a package
// URI or upgrade command: NOTIFIED) is synced, and a synced append makes every
// append that returned before it durable (the store's log is in order). If a
// crash takes the grant, it takes every step of the device after it too, so no
// device holds a slot its cell does not count; the device asks again on
// recovery. A place in the queue is asked for again on recovery; a returned
// slot is re-granted on recovery and handed back, so a lost return only keeps
// the slot counted a moment longer.
func (x *CellEvent) MustSync() bool { return false }

// MustSync reports whether ev must be durable before its step's effects run:
// every task event is (starts, outcomes and retries number attempts; a lost
// wake-up could leave sub-tasks unstarted). A SubtaskFinished also makes its
// device's unsynced JobFinished durable (see DeviceEvent.MustSync).
func (x *TaskEvent) MustSync() bool { return true }

// FoundAgainOnResume reports whether the step of device report x may be
// lost in a crash although the device was acknowledged it, because the
// device machine finds the report again after recovery: it holds for a
// FOTA Update Result of 1 (success), with State 0 or without a State. Its
// step enters VERIFYING, which only reads the version; a crash that takes
// it leaves the job in UPGRADING (or DOWNLOADED), whose Resume observes
// (or reads) object 5 again, and the device keeps Update Result 1 until its
// next download; if no answer comes, T9 sends the version read
// (devicefsm's crash_lost_update_result.txt). It does not hold for State 1
// or 3, whose stages (DOWNLOADING, UPGRADING) must be synced: the stage
// before them has a short deadline (T5, T8) that a recovery may find
// passed, failing a device at work before its observation answers; nor for
// a failure code, which a recovered DOWNLOADED could turn into T8's
// failure. A transport may acknowledge such a confirmable notification
// before its step is durable by marking it no_ack (issue 21); today none
// does, as every confirmable report is acknowledged only once durable.
func (x *DeviceInput) FoundAgainOnResume() bool {
	f := x.GetFotaStatus()
	return f != nil && f.UpdateResult != nil && f.GetUpdateResult() == UpdateResultSuccess &&
		(f.State == nil || f.GetState() == FotaStateIdle)
}
