package taskfsm

import (
	"fmt"
	"testing"
	"time"

	"github.com/otafleet/otafleet/messages"
)

// BenchmarkCampaign30k creates a task of 30,000 devices and reports every
// outcome (a third fail once and are retried by the wake): the per-step cost
// must not grow with the number of devices.
func BenchmarkCampaign30k(b *testing.B) {
	cfg := DefaultConfig()
	ids := make([]string, 30000)
	for i := range ids {
		ids[i] = fmt.Sprintf("device-%05d", i)
	}
	for b.Loop() {
		c := validCreate(ids...)
		c.Policy = &messages.Policy{RetryCount: 1, RetryIntervalMinutes: 5}
		now := unitT0
		s, _, err := Step(cfg, State{}, createInput(now, c))
		if err != nil {
			b.Fatal(err)
		}
		for round := uint32(1); round <= 2; round++ {
			for i, id := range ids {
				st := messages.SubtaskStatus_SUBTASK_STATUS_SUCCESS
				if round == 1 && i%3 == 0 {
					st = messages.SubtaskStatus_SUBTASK_STATUS_FAIL
				}
				if sub, _ := s.Subtask(id); sub.Status != messages.SubtaskStatus_SUBTASK_STATUS_PROCESSING {
					continue
				}
				now = now.Add(time.Millisecond)
				s, _, err = Step(cfg, s, &messages.TaskInput{AtUnixNano: now.UnixNano(), Kind: &messages.TaskInput_Outcome{Outcome: &messages.ReportOutcome{
					TaskId: "t1", DeviceId: id, Attempt: round, Status: st}}})
				if err != nil {
					b.Fatal(err)
				}
			}
			at, gen := s.Wake()
			if round == 1 {
				s, _, err = Step(cfg, s, &messages.TaskInput{AtUnixNano: at.Add(5 * time.Minute).UnixNano(), Kind: &messages.TaskInput_DeadlineFired{DeadlineFired: &messages.DeadlineFired{Step: WakeStep, Generation: gen}}})
				if err != nil {
					b.Fatal(err)
				}
			}
		}
		if s.Status() != messages.TaskStatus_TASK_STATUS_SUCCESS {
			b.Fatalf("status %v %+v", s.Status(), s.Progress())
		}
	}
}
