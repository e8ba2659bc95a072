package devicefsm

import (
	"testing"
	"time"

	"github.com/otafleet/otafleet/messages"
)

// BenchmarkFOTAUpgrade measures one complete LwM2M FOTA job (13 inputs, from
// StartJob to the verified version) through Step, as the device actor will
// run it. Reported per job.
func BenchmarkFOTAUpgrade(b *testing.B) {
	cfg := DefaultConfig()
	job := testJob(protoFOTA)
	fw1, fw2 := "1.0", "2.0"
	seq := []*messages.DeviceInput{
		{Kind: &messages.DeviceInput_StartJob{StartJob: &messages.StartJob{Job: job}}},
		{Kind: &messages.DeviceInput_VersionReported{VersionReported: &messages.VersionReported{FwVersion: &fw1}}},
		{Kind: &messages.DeviceInput_RadioReported{RadioReported: &messages.RadioReported{Rsrp: i32p(-90), Sinr: i32p(10), CellId: "c1"}}},
		{Kind: &messages.DeviceInput_PermitGranted{PermitGranted: &messages.PermitGranted{CellId: "c1"}}},
		{Kind: &messages.DeviceInput_Lwm2MResponse{Lwm2MResponse: &messages.Lwm2MResponse{Op: messages.Lwm2MOp_LWM2M_OP_WRITE, Path: messages.PathPackageURI, Success: true, Code: "2.04"}}},
		{Kind: &messages.DeviceInput_FotaStatus{FotaStatus: &messages.FotaStatus{State: i32p(1)}}},
		{Kind: &messages.DeviceInput_FotaStatus{FotaStatus: &messages.FotaStatus{State: i32p(2)}}},
		{Kind: &messages.DeviceInput_Lwm2MResponse{Lwm2MResponse: &messages.Lwm2MResponse{Op: messages.Lwm2MOp_LWM2M_OP_EXECUTE, Path: messages.PathUpdate, Success: true, Code: "2.04"}}},
		{Kind: &messages.DeviceInput_FotaStatus{FotaStatus: &messages.FotaStatus{State: i32p(3)}}},
		{Kind: &messages.DeviceInput_FotaStatus{FotaStatus: &messages.FotaStatus{State: i32p(0), UpdateResult: i32p(1)}}},
		{Kind: &messages.DeviceInput_VersionReported{VersionReported: &messages.VersionReported{FwVersion: &fw2}}},
	}
	for i, in := range seq {
		in.AtUnixNano = messages.UnixNano(epoch.Add(time.Duration(i+1) * time.Second))
	}
	online := New("dev-1")
	online.Online, online.Awake = true, true
	b.ReportAllocs()
	for b.Loop() {
		s := online
		for _, in := range seq {
			var err error
			s, _, err = Step(cfg, s, in)
			if err != nil {
				b.Fatal(err)
			}
		}
		if s.Last == nil || s.Last.Outcome.GetStatus() != statusSuccess {
			b.Fatal("job did not succeed")
		}
	}
}
