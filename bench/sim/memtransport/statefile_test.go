package memtransport

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func line(t *testing.T, r record) string {
	t.Helper()
	b, err := formatLine(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParseState(t *testing.T) {
	h := stateHeader + "\n"
	a := line(t, record{ID: "a", Fw: "1.0"})
	a2 := line(t, record{ID: "a", Fw: "2.0", Upgrades: 1, Executes: 1})
	b := line(t, record{ID: "b", Sw: "3.0", PCPResultPending: true})
	badCRC := "00000000" + a[8:]
	for _, tc := range []struct {
		name    string
		data    string
		good    int // -1: all of data
		want    map[string]string
		wantErr string
	}{
		{name: "empty", data: "", good: 0, want: map[string]string{}},
		{name: "torn header", data: stateHeader[:10], good: 0, want: map[string]string{}},
		{name: "header only", data: h, good: -1, want: map[string]string{}},
		{name: "last wins", data: h + a + b + a2, good: -1, want: map[string]string{"a": "2.0", "b": ""}},
		{name: "torn last line", data: h + a + a2[:20], good: len(h + a), want: map[string]string{"a": "1.0"}},
		{name: "torn line missing its newline", data: h + a + strings.TrimSuffix(a2, "\n"), good: len(h + a), want: map[string]string{"a": "1.0"}},
		{name: "bad checksum on the last line", data: h + a + badCRC, good: len(h + a), want: map[string]string{"a": "1.0"}},
		{name: "wrong header", data: "hello\n" + a, wantErr: "line 1"},
		{name: "foreign short file", data: "xyz", wantErr: "line 1"},
		{name: "bad checksum inside", data: h + badCRC + b, wantErr: "line 2: checksum mismatch"},
		{name: "garbage inside", data: h + a + "junk\n" + b, wantErr: "line 3: malformed"},
		{name: "bad json inside", data: h + line(t, record{ID: "a"})[:9] + "{oops}\n" + b, wantErr: "line 2"},
		{name: "torn line inside", data: h + a2[:20] + "\n" + b, wantErr: "line 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs, good, err := parseState([]byte(tc.data))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tc.good
			if want < 0 {
				want = len(tc.data)
			}
			if good != want {
				t.Errorf("valid prefix %d bytes, want %d", good, want)
			}
			if len(recs) != len(tc.want) {
				t.Fatalf("records %+v, want ids %v", recs, tc.want)
			}
			for id, fw := range tc.want {
				if recs[id].Fw != fw {
					t.Errorf("record %s: fw %q, want %q", id, recs[id].Fw, fw)
				}
			}
		})
	}
}

// TestStateFileTruncatesTornTail: a torn last line is cut off on open, so
// the next append starts on a line boundary and the file stays valid.
func TestStateFileTruncatesTornTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	a := line(t, record{ID: "a", Fw: "1.0"})
	if err := os.WriteFile(path, []byte(stateHeader+"\n"+a+`1234abcd {"id":"b","f`), 0o644); err != nil {
		t.Fatal(err)
	}
	sf, recs, err := openStateFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs["a"].Fw != "1.0" {
		t.Fatalf("records %+v", recs)
	}
	if err := sf.append(record{ID: "b", Fw: "2.0"}); err != nil {
		t.Fatal(err)
	}
	if err := sf.close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := stateHeader + "\n" + a + line(t, record{ID: "b", Fw: "2.0"}); string(data) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", data, want)
	}
	sf, recs, err = openStateFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer sf.close()
	if len(recs) != 2 || recs["b"].Fw != "2.0" {
		t.Fatalf("records after reopen %+v", recs)
	}
}

// TestStateFileNew: a missing file is created with its header.
func TestStateFileNew(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	sf, recs, err := openStateFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 0 {
		t.Fatalf("records %+v", recs)
	}
	sf.close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != stateHeader+"\n" {
		t.Fatalf("new file %q", data)
	}
}

// TestStateFileConcurrentAppends: appends from many goroutines share syncs
// and every record lands on its own line.
func TestStateFileConcurrentAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	sf, _, err := openStateFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const n = 64
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- sf.append(record{ID: fmt.Sprintf("d%d", i), Upgrades: i}) }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	sf.close()
	_, recs, err := openStateFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != n || recs["d63"].Upgrades != 63 {
		t.Fatalf("%d records, d63 %+v", len(recs), recs["d63"])
	}
}
