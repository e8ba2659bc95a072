package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"

	v1 "github.com/otafleet/otafleet/rpc/otafleetv1"
)

func TestParseEnum(t *testing.T) {
	for _, c := range []struct {
		word string
		want v1.SubtaskStatus
	}{
		{"fail", v1.SubtaskStatus_SUBTASK_STATUS_FAIL},
		{"FAIL-WAIT-RETRY", v1.SubtaskStatus_SUBTASK_STATUS_FAIL_WAIT_RETRY},
		{"SUBTASK_STATUS_STOPPED", v1.SubtaskStatus_SUBTASK_STATUS_STOPPED},
	} {
		got, err := parseEnum("--status", c.word, "SUBTASK_STATUS_", v1.SubtaskStatus_value)
		if err != nil || v1.SubtaskStatus(got) != c.want {
			t.Errorf("%q: %v %v", c.word, got, err)
		}
	}
	for _, bad := range []string{"", "unspecified", "done"} {
		if _, err := parseEnum("--status", bad, "SUBTASK_STATUS_", v1.SubtaskStatus_value); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseWindowAndSchedule(t *testing.T) {
	s, e, err := parseWindow("22:30-04:00")
	if err != nil || s != 22*60+30 || e != 240 {
		t.Fatalf("parseWindow = %d %d %v", s, e, err)
	}
	for _, bad := range []string{"22:30", "25:00-01:00", "1-2"} {
		if _, _, err := parseWindow(bad); err == nil {
			t.Errorf("window %q accepted", bad)
		}
	}
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	if at, err := parseSchedule("90m", now); err != nil || !at.Equal(now.Add(90*time.Minute)) {
		t.Errorf("90m: %v %v", at, err)
	}
	if at, err := parseSchedule("2026-11-24T02:00:00+01:00", now); err != nil || at.UTC().Hour() != 1 {
		t.Errorf("RFC 3339: %v %v", at, err)
	}
	if _, err := parseSchedule("tomorrow", now); err == nil {
		t.Error("tomorrow accepted")
	}
}

func TestClientResolution(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "addrs.json"), []byte(`{"api":"127.0.0.1:9999"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "api-token"), []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(envAPI, "")
	t.Setenv(envToken, "")
	o := &clientOpts{dataDir: dir}
	if u, err := o.baseURL(); err != nil || u != "http://127.0.0.1:9999" {
		t.Errorf("baseURL from addrs.json = %q %v", u, err)
	}
	if tok, err := o.resolvedToken(); err != nil || tok != "from-file" {
		t.Errorf("token from the data dir = %q %v", tok, err)
	}
	t.Setenv(envToken, "from-env")
	t.Setenv(envAPI, "https://ota.example:8443/")
	if tok, _ := o.resolvedToken(); tok != "from-env" {
		t.Errorf("token from the environment = %q", tok)
	}
	if u, _ := o.baseURL(); u != "https://ota.example:8443" {
		t.Errorf("baseURL from the environment = %q", u)
	}
	o.token, o.api = "from-flag", "ftp://x"
	if tok, _ := o.resolvedToken(); tok != "from-flag" {
		t.Errorf("token from the flag = %q", tok)
	}
	if _, err := o.baseURL(); err == nil {
		t.Error("ftp:// accepted")
	}
	if _, err := (&clientOpts{dataDir: t.TempDir()}).resolvedToken(); err != nil {
		// OTAFLEET_TOKEN is still set: the environment wins over a missing file.
		t.Errorf("token with the environment set: %v", err)
	}
	t.Setenv(envToken, "")
	if _, err := (&clientOpts{dataDir: t.TempDir()}).resolvedToken(); err == nil {
		t.Error("no token anywhere, but no error")
	}
}

func TestRecordIDs(t *testing.T) {
	for _, c := range []struct {
		m    interface{ ProtoReflect() protoreflect.Message }
		want string
	}{
		{&v1.CreateProductResponse{Product: &v1.Product{ProductId: "p1", Name: "n"}}, "[p1]"},
		{&v1.CreateDevicesResponse{DeviceIds: []string{"a", "b"}}, "[a b]"},
		{&v1.ListTasksResponse{Tasks: []*v1.Task{{TaskId: "t2", PackageId: "k"}, {TaskId: "t1"}}, NextPageToken: "x"}, "[t2 t1]"},
		{&v1.ListTaskDevicesResponse{Devices: []*v1.TaskDevice{{DeviceId: "d1"}}}, "[d1]"},
		{&v1.UploadPackageResponse{Package: &v1.Package{PackageId: "k1", ProductId: "p"}}, "[k1]"},
		{&v1.DeleteGroupResponse{}, "[]"},
	} {
		if got := fmt.Sprint(recordIDs(c.m.ProtoReflect())); got != c.want {
			t.Errorf("%T: %s, want %s", c.m, got, c.want)
		}
	}
}

// TestNaturalOrder: IDs sort as people count (sim-2 before sim-10), which
// task devices shows; counted nouns agree with their number.
func TestNaturalOrder(t *testing.T) {
	ids := []string{"sim-10", "sim-2", "b", "sim-1", "a10", "a9", "sim-02", "sim-", "a", "sim-100"}
	slices.SortFunc(ids, naturalCompare)
	if got, want := strings.Join(ids, " "), "a a9 a10 b sim- sim-1 sim-2 sim-02 sim-10 sim-100"; got != want {
		t.Errorf("sorted: %s, want %s", got, want)
	}
	for n, want := range map[int]string{0: "0 devices", 1: "1 device", 2: "2 devices"} {
		if got := plural(n, "device"); got != want {
			t.Errorf("plural(%d) = %q", n, got)
		}
	}
}
