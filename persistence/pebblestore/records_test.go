package pebblestore

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otafleet/otafleet/internal/goldentest"
	"github.com/otafleet/otafleet/persistence/registrypb"
	"google.golang.org/protobuf/proto"
)

// goldenRecords are one record of each type with every field set; their
// stored bytes are in testdata/records.golden, so that a change of encoding
// shows up and old stores keep decoding.
var goldenRecords = []struct {
	name string
	typ  uint32
	msg  proto.Message
}{
	{"product", recProduct, &registrypb.Product{Id: "p1", Name: "Meter", Protocol: registrypb.Protocol_PROTOCOL_LWM2M, SoftwarePcp: true, SkipVersionCheck: true, CreatedUnixNano: 1744592400000000000}},
	{"device", recDevice, &registrypb.Device{Id: "d1", ProductId: "p1", SealedSecret: []byte("sealed-secret"), SealedPsk: []byte("sealed-psk"), CreatedUnixNano: 1744592400000000001}},
	{"group", recGroup, &registrypb.Group{Id: "g1", Name: "north", DeviceIds: []string{"d1", "d2"}, CreatedUnixNano: 1744592400000000002}},
	{"package", recPackage, &registrypb.Package{
		Id: "k1", ProductId: "p1", Type: registrypb.PackageType_PACKAGE_TYPE_SOFTWARE, Version: "2.0", SourceVersions: []string{"1.0", "1.1"},
		FileName: "fw.bin", Size: 1234, Sha256: bytes.Repeat([]byte{0xab}, 32), Description: "d", CustomInfo: "c",
		OmitSign: true, SegmentSize: 500, CheckCode: 0x3132, CreatedUnixNano: 1744592400000000003,
	}},
	{"task", recTask, &registrypb.Task{Id: "t1", Name: "spring_rollout", PackageId: "k1", CreatedUnixNano: 1744592400000000004}},
	{"blob", recBlobHeader, &registrypb.Blob{Size: 200000, Sha256: bytes.Repeat([]byte{0xcd}, 32), ChunkSize: 65536}},
}

func TestRecordGolden(t *testing.T) {
	path := filepath.Join("testdata", "records.golden")
	var out strings.Builder
	out.WriteString("# Stored registry records (persistence envelope + registrypb), one per line: name hex.\n")
	out.WriteString("# Regenerate with: go test ./persistence/pebblestore -run TestRecordGolden -rewrite\n")
	for _, r := range goldenRecords {
		v, err := encodeRecord(r.typ, r.msg) // the records hold no maps: the bytes are deterministic
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&out, "%s %x\n", r.name, v)
	}
	goldentest.Check(t, path, out.String())

	// The committed bytes decode to the same records.
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := 0
	for sc := bufio.NewScanner(f); sc.Scan(); {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, hx, _ := strings.Cut(line, " ")
		v, err := hex.DecodeString(hx)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, r := range goldenRecords {
			if r.name != name {
				continue
			}
			got := r.msg.ProtoReflect().New().Interface()
			if err := decodeRecord([]byte(name), v, r.typ, got); err != nil {
				t.Fatalf("%s: the golden bytes no longer decode: %v", name, err)
			}
			if !proto.Equal(got, r.msg) {
				t.Fatalf("%s: golden bytes decode to %v, want %v", name, got, r.msg)
			}
			seen++
		}
	}
	if seen != len(goldenRecords) {
		t.Fatalf("the golden file holds %d of the %d records", seen, len(goldenRecords))
	}
}
