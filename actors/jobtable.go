package actors

import (
	"hash/maphash"
	"sync"

	"github.com/otafleet/otafleet/actors/device/devicefsm"
	"github.com/otafleet/otafleet/messages"
)

// JobStage is a device's active job as its actor last published it: the
// job's task and attempt, and what ListTaskDevices shows of the running
// sub-task (the device's stage, download progress and, once the job's
// version check compared it, the source version).
type JobStage struct {
	TaskID        string
	Attempt       uint32
	Stage         messages.Stage
	Progress      int32
	SourceVersion string // "" until the job's version check
}

// jobStageOf is the published form of s; false when s has no job.
func jobStageOf(s *devicefsm.State) (JobStage, bool) {
	if s.Job == nil {
		return JobStage{}, false
	}
	return JobStage{TaskID: s.Job.GetTaskId(), Attempt: s.Job.GetAttempt(), Stage: s.Stage, Progress: s.Progress, SourceVersion: s.SourceVersion}, true
}

// jobTable holds the active jobs of the devices, by device ID, so that a
// task's page of devices reads its running sub-tasks' stages without asking
// (and waiting for) each device's actor.
//
// A device's actor is the only writer of its entry: it sets it after each
// step that changed its job's entry and when it has recovered a job
// (activation, so a restart rebuilds the table: Engine.Start recovers every
// device with a job), and deletes it when the job ends, so an idle fleet
// holds nothing here. The entry outlives the actor's passivation (the job
// cannot change while the actor is stopped) and is deleted when a recovery
// fails (the actor answers nothing then). The table is sharded so that the
// devices' writes and the queries' reads seldom meet on one lock.
type jobTable struct {
	seed   maphash.Seed
	shards [64]jobShard
}

type jobShard struct {
	mu sync.RWMutex
	m  map[string]JobStage
}

func newJobTable() *jobTable {
	t := &jobTable{seed: maphash.MakeSeed()}
	for i := range t.shards {
		t.shards[i].m = map[string]JobStage{}
	}
	return t
}

func (t *jobTable) shard(deviceID string) *jobShard {
	return &t.shards[maphash.String(t.seed, deviceID)%uint64(len(t.shards))]
}

// get returns device deviceID's active job; false when it has none.
func (t *jobTable) get(deviceID string) (JobStage, bool) {
	sh := t.shard(deviceID)
	sh.mu.RLock()
	j, ok := sh.m[deviceID]
	sh.mu.RUnlock()
	return j, ok
}

func (t *jobTable) set(deviceID string, j JobStage) {
	sh := t.shard(deviceID)
	sh.mu.Lock()
	sh.m[deviceID] = j
	sh.mu.Unlock()
}

func (t *jobTable) drop(deviceID string) {
	sh := t.shard(deviceID)
	sh.mu.Lock()
	delete(sh.m, deviceID)
	sh.mu.Unlock()
}

// len is the number of entries (tests check an idle fleet holds none).
func (t *jobTable) len() int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.RLock()
		n += len(sh.m)
		sh.mu.RUnlock()
	}
	return n
}

// ActiveJobs returns the number of devices with an active job, as their
// actors published them (see jobTable): 0 on an idle fleet.
func (e *Engine) ActiveJobs() int { return e.jobs.len() }

// DeviceJob returns the active job of device deviceID as its actor
// published it after its last step that changed it (JobStage), without
// asking the actor: false when the device has no job, or its actor has not
// recovered one (yet, or at all).
func (e *Engine) DeviceJob(deviceID string) (JobStage, bool) { return e.jobs.get(deviceID) }
