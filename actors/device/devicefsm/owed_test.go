package devicefsm

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/otafleet/otafleet/messages"
)

// TestOwed pins the one answer to "what does this stage still owe the
// device" for each flow, after a restart (Resume), on a new session
// (connected) and on a registration update, where they differ on purpose: a
// new session reads object 5 of a FOTA device that holds its URI (issue 20
// item 5: it is not written again), resends MQTT's event or asks its
// version, and sends a due 0x17; a restart does none of that; a
// registration update after the Execute only reads object 5 (item 4). The
// URI goes again only while its write is unacknowledged, after the reset
// while the device never acknowledged the job's URI (item 6).
func TestOwed(t *testing.T) {
	pkg := &messages.Package{PackageId: "p", Version: "2.0", Size: 1000, SegmentSize: 500, CheckCode: 7}
	all := func(s string) [3]string { return [3]string{s, s, ""} }
	for _, c := range []struct {
		name  string
		proto messages.Protocol
		stage messages.Stage
		acked bool      // UriAcked
		held  bool      // UriHeld
		due   bool      // PcpExecuteDue
		want  [3]string // restarted, reconnected, updated
	}{
		{"mqtt waiting online", protoMQTT, stWaitOnline, false, false, false, all("")},
		{"mqtt version", protoMQTT, stVersion, false, false, false, all("mqtt_version_query")},
		{"mqtt notified", protoMQTT, stNotified, false, false, false, [3]string{"", "mqtt_upgrade", ""}},
		{"mqtt downloading", protoMQTT, stDownloading, false, false, false, [3]string{"", "mqtt_version_query", ""}},

		{"fota version", protoFOTA, stVersion, false, false, false, all("lwm2m_read /3/0/3")},
		{"fota radio", protoFOTA, stRadio, false, false, false, all("lwm2m_read /4/0")},
		{"fota cell", protoFOTA, stCell, false, false, false, all("lwm2m_read /4/0/8")},
		{"fota permit", protoFOTA, stWaitPermit, false, false, false, all("")},
		{"fota notified, write acknowledged", protoFOTA, stNotified, true, true, false, [3]string{
			"lwm2m_observe /5/0/3, lwm2m_observe /5/0/5",
			"lwm2m_read /5/0, lwm2m_observe /5/0/3, lwm2m_observe /5/0/5", ""}},
		{"fota downloading, write acknowledged", protoFOTA, stDownloading, true, true, false, [3]string{
			"lwm2m_observe /5/0/3, lwm2m_observe /5/0/5",
			"lwm2m_read /5/0, lwm2m_observe /5/0/3, lwm2m_observe /5/0/5", ""}},
		{"fota downloading, first write unacknowledged", protoFOTA, stDownloading, false, false, false,
			all("lwm2m_write /5/0/1, lwm2m_write_package_uri, lwm2m_observe /5/0/3, lwm2m_observe /5/0/5")},
		{"fota downloading, write again unacknowledged", protoFOTA, stDownloading, false, true, false,
			all("lwm2m_write_package_uri, lwm2m_observe /5/0/3, lwm2m_observe /5/0/5")},
		{"fota downloaded", protoFOTA, stDownloaded, true, true, false, [3]string{
			"lwm2m_observe /5/0/3, lwm2m_observe /5/0/5, lwm2m_read /5/0",
			"lwm2m_observe /5/0/3, lwm2m_observe /5/0/5, lwm2m_read /5/0", "lwm2m_read /5/0"}},
		{"fota upgrading", protoFOTA, stUpgrading, true, true, false, [3]string{
			"lwm2m_observe /5/0/3, lwm2m_observe /5/0/5",
			"lwm2m_observe /5/0/3, lwm2m_observe /5/0/5", "lwm2m_read /5/0"}},
		{"fota verifying", protoFOTA, stVerifying, true, true, false, all("lwm2m_read /3/0/3")},

		{"pcp waiting online", protoPCP, stWaitOnline, false, false, false, all("")},
		{"pcp version", protoPCP, stVersion, false, false, false, all("lwm2m_observe /19/0/0, pcp_query_version")},
		{"pcp radio", protoPCP, stRadio, false, false, false, all("lwm2m_observe /19/0/0, lwm2m_read /4/0")},
		{"pcp permit", protoPCP, stWaitPermit, false, false, false, all("lwm2m_observe /19/0/0")},
		{"pcp downloading", protoPCP, stDownloading, false, false, false, all("lwm2m_observe /19/0/0, pcp_notify_new_version")},
		{"pcp downloaded, 0x17 sent", protoPCP, stDownloaded, false, false, false, all("lwm2m_observe /19/0/0")},
		{"pcp downloaded, 0x17 due", protoPCP, stDownloaded, false, false, true, [3]string{
			"lwm2m_observe /19/0/0", "lwm2m_observe /19/0/0, pcp_execute", ""}},
		{"pcp upgrading", protoPCP, stUpgrading, false, false, false, all("lwm2m_observe /19/0/0")},
		{"pcp verifying", protoPCP, stVerifying, false, false, false, all("lwm2m_observe /19/0/0, pcp_query_version")},
	} {
		s := New("dev-1")
		s.Job = &messages.Job{TaskId: "t", Attempt: 1, Protocol: c.proto, Package: pkg}
		s.Stage, s.UriAcked, s.UriHeld, s.PcpExecuteDue = c.stage, c.acked, c.held, c.due
		for i, on := range []occasion{restarted, reconnected, updated} {
			var got []string
			for _, dl := range owed(s, on) {
				name := dl.ProtoReflect().WhichOneof(dl.ProtoReflect().Descriptor().Oneofs().ByName("kind")).Name()
				item := string(name)
				if p := downlinkPath(dl); p != "" {
					item += " " + p
				}
				got = append(got, item)
			}
			if g := strings.Join(got, ", "); g != c.want[i] {
				t.Errorf("%s, %s: owed %q, want %q", c.name, []string{"restarted", "reconnected", "updated"}[i], g, c.want[i])
			}
		}
	}
	if got := owed(New("dev-1"), reconnected); got != nil {
		t.Errorf("an idle device is owed %v", got)
	}
}

// downlinkPath is the LwM2M path a read or an observation names ("" for
// other downlinks).
func downlinkPath(dl *messages.Downlink) string {
	switch k := dl.GetKind().(type) {
	case *messages.Downlink_Lwm2MRead:
		return k.Lwm2MRead.GetPath()
	case *messages.Downlink_Lwm2MObserve:
		return k.Lwm2MObserve.GetPath()
	case *messages.Downlink_Lwm2MWrite:
		return k.Lwm2MWrite.GetPath()
	}
	return ""
}

// TestWithJob checks that withJob, which JobAccepted and JobFinished share,
// resets every field of State that belongs to a job and keeps every other
// one. A new State field fails here until it is listed as kept or withJob
// resets it.
func TestWithJob(t *testing.T) {
	kept := map[string]bool{
		"DeviceID": true, "Online": true, "Awake": true, "QueueMode": true, "Abnormal": true,
		"FwVersion": true, "SwVersion": true, "HasFw": true, "HasSw": true, "Radio": true,
		"Generation": true, // a deadline of an earlier job stays stale
		"Outbox":     true, // JobAccepted keeps it, JobFinished empties it
		"Last":       true,
	}
	var s State
	v := reflect.ValueOf(&s).Elem()
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		switch f.Interface().(type) {
		case time.Time:
			f.Set(reflect.ValueOf(epoch))
		case Radio:
			f.Set(reflect.ValueOf(Radio{RSRP: -90, HasRSRP: true, CellID: "c"}))
		case *messages.Job:
			f.Set(reflect.ValueOf(&messages.Job{TaskId: "old"}))
		case *Last:
			f.Set(reflect.ValueOf(&Last{PermitCell: "c"}))
		case []*messages.Downlink:
			f.Set(reflect.ValueOf([]*messages.Downlink{read(messages.PathCellID)}))
		default:
			switch f.Kind() {
			case reflect.Bool:
				f.SetBool(true)
			case reflect.String:
				f.SetString("x")
			case reflect.Int, reflect.Int32, reflect.Int64:
				f.SetInt(1)
			case reflect.Uint64:
				f.SetUint(1)
			default:
				t.Fatalf("State.%s: no sample value for %v", v.Type().Field(i).Name, f.Type())
			}
		}
	}
	j := &messages.Job{TaskId: "new"}
	for _, job := range []*messages.Job{j, nil} {
		got := reflect.ValueOf(withJob(s, job))
		for i := 0; i < v.NumField(); i++ {
			name := v.Type().Field(i).Name
			g := got.Field(i)
			switch {
			case name == "Job":
				if g.Interface().(*messages.Job) != job {
					t.Errorf("withJob(s, %v).Job = %v", job, g.Interface())
				}
			case kept[name]:
				if !reflect.DeepEqual(g.Interface(), v.Field(i).Interface()) {
					t.Errorf("withJob changed %s: %v, was %v", name, g.Interface(), v.Field(i).Interface())
				}
			case !g.IsZero():
				t.Errorf("withJob left %s = %v: a job's field, or one to keep?", name, g.Interface())
			}
		}
	}
}
