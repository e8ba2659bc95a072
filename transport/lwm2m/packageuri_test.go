package lwm2m_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/transport/download"
	"github.com/otafleet/otafleet/transport/lwm2m"
)

// Realistic IDs (issue 20, item 2): the server's package and task IDs are
// 24 hex digits; device IDs go up to 128 characters (spec 5.1).
const (
	longPackage = "5f3c9a0e1b2d4c6e8a0b1c2d"
	longTask    = "0193e7a4c5d6e7f801234567"
)

var longDeviceID = func() string {
	id := "urn:dev:ops:otafleet-field-fit-" + strings.Repeat("0123456789abcdef", 8)
	return id[:persistence.MaxIDLen]
}()

// addLongDevice stores the 128-character device and a package with a
// server-style ID holding the env's content.
func addLongDevice(t *testing.T, e *env) {
	t.Helper()
	ctx := context.Background()
	if err := e.store.CreateDevices(ctx, []persistence.Device{{ID: longDeviceID, ProductID: "p"}}); err != nil {
		t.Fatal(err)
	}
	size, sum, err := e.store.WriteBlob(ctx, longPackage, bytes.NewReader(e.content), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store.PutPackage(ctx, persistence.Package{ID: longPackage, ProductID: "p", Type: persistence.PackageFirmware, Version: "2.0", FileName: "fw.bin", Size: size, SHA256: sum}); err != nil {
		t.Fatal(err)
	}
}

// registerLong registers the long device over plain CoAP on e's server.
func registerLong(t *testing.T, e *env) *device {
	t.Helper()
	d := dial(t, e)
	if res, err := d.register(t, "ep="+longDeviceID+"&lt=172800&lwm2m=1.1&b=U", links); err != nil || res.Code() != codes.Created {
		t.Fatalf("register %s: %v %v", longDeviceID, res, err)
	}
	if got := e.rec.next(t); got != longDeviceID+" connected:{}" {
		t.Fatalf("got %q", got)
	}
	return d
}

// writeLongURI has the server write the package URI of attempt 1 to the
// long device, and returns what the device received.
func writeLongURI(t *testing.T, e *env, d *device) string {
	t.Helper()
	d.mu.Lock()
	delete(d.writes, messages.PathPackageURI)
	d.mu.Unlock()
	job := &messages.Job{TaskId: longTask, Attempt: 1, Package: &messages.Package{PackageId: longPackage, Version: "2.0"}}
	if err := e.srv.Send(context.Background(), &messages.Downlink{DeviceId: longDeviceID, Kind: &messages.Downlink_Lwm2MWritePackageUri{Lwm2MWritePackageUri: &messages.Lwm2MWritePackageUri{Job: job}}}); err != nil {
		t.Fatal(err)
	}
	offer := e.rec.next(t)
	if got, want := e.rec.next(t), longDeviceID+` lwm2m_response:{op:LWM2M_OP_WRITE path:"/5/0/1" success:true code:"2.04"} no_ack:true`; got != want {
		t.Fatalf("package URI write: %q", got)
	}
	if !strings.HasPrefix(offer, longDeviceID+" download_offered:") {
		t.Fatalf("before the write's answer: %q, want its DownloadOffered", offer)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.writes[messages.PathPackageURI]
}

// downloadURI fetches the whole package at uri as a LiteOS agent does: the
// URI's path (and query, if any) over the device's own conversation, 512
// bytes a block.
func downloadURI(t *testing.T, d *device, uri string) []byte {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var all []byte
	for num := uint32(0); ; num++ {
		req, err := d.conn.NewGetRequest(ctx, u.Path)
		if err != nil {
			t.Fatal(err)
		}
		if u.RawQuery != "" {
			for _, q := range strings.Split(u.RawQuery, "&") {
				req.AddOptionString(message.URIQuery, q)
			}
		}
		buf := make([]byte, 4)
		n, _ := message.EncodeUint32(buf, num<<4|5)
		req.AddOptionBytes(message.Block2, buf[:n])
		res, err := d.conn.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if res.Code() != codes.Content {
			t.Fatalf("block %d of %s: %v", num, uri, res.Code())
		}
		b, _ := io.ReadAll(res.Body())
		all = append(all, b...)
		if v, _ := res.Options().GetUint32(message.Block2); v&8 == 0 {
			return all
		}
	}
}

// TestPackageURILongDeviceID (issue 20, item 2): the Package URI of a
// device with a 128-character ID fits /5/0/1 (255 characters), carries its
// token in the path (LiteOS keeps only a URI's path), is the same text on
// every write of the attempt, however late, and downloads.
func TestPackageURILongDeviceID(t *testing.T) {
	e := newEnv(t)
	addLongDevice(t, e)
	d := registerLong(t, e)
	uri := writeLongURI(t, e, d)
	if len(uri) > 255 {
		t.Fatalf("the package URI of a %d-character device ID has %d characters, /5/0/1 holds 255: %s", len(longDeviceID), len(uri), uri)
	}
	if u, err := url.Parse(uri); err != nil || u.RawQuery != "" || !strings.HasPrefix(uri, "coap://"+e.srv.Addr()+"/fw/"+longPackage+"/t=") {
		t.Fatalf("package URI %q: want the token in the path of coap://%s/fw/%s/t=...", uri, e.srv.Addr(), longPackage)
	}
	if got := downloadURI(t, d, uri); sha256.Sum256(got) != e.sum {
		t.Fatalf("downloaded %d bytes with another SHA-256", len(got))
	}
	e.clk.Advance(25 * time.Hour) // longer than a token lives
	if again := writeLongURI(t, e, d); again != uri {
		t.Fatalf("the attempt's URI written again a day later:\n%s\nfirst:\n%s", again, uri)
	}
	if got := downloadURI(t, d, uri); sha256.Sum256(got) != e.sum {
		t.Fatalf("a day later: downloaded %d bytes with another SHA-256", len(got))
	}
}

// TestPackageURIAfterRestart (issue 20, item 2): a server restarted with
// the same download key on the same store writes the same URI for the same
// attempt (so a LiteOS agent resumes its download), and serves the URI
// written before the restart.
func TestPackageURIAfterRestart(t *testing.T) {
	e := newEnv(t)
	addLongDevice(t, e)
	uri := writeLongURI(t, e, registerLong(t, e))
	addr := e.srv.Addr()
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}

	var err error
	e.dl, err = download.New(download.Config{Packages: e.store, Handles: e.store, Key: bytes.Repeat([]byte{7}, 32), Clock: e.clk})
	if err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(time.Hour)
	e.srv, err = lwm2m.New(lwm2m.Config{Addr: addr, Devices: e.store, Packages: e.store, Tokens: e.dl, Uplinks: e.rec, Clock: e.clk})
	if err != nil {
		t.Fatal(err)
	}
	e.srv.Start()
	t.Cleanup(func() { e.srv.Close() })
	d := registerLong(t, e)
	if got := downloadURI(t, d, uri); sha256.Sum256(got) != e.sum {
		t.Fatalf("the URI of before the restart: downloaded %d bytes with another SHA-256", len(got))
	}
	if again := writeLongURI(t, e, d); again != uri {
		t.Fatalf("after a restart the attempt's URI is\n%s\nbefore it was\n%s", again, uri)
	}
}

// TestPackageURILiteOSPath (issue 20, item 2): Huawei's LiteOS agent keeps
// only a URI's path, and puts "{package}?t={token}" of a URI with a query
// in its last Uri-Path option: the token is found there, as in a Uri-Query
// option.
func TestPackageURILiteOSPath(t *testing.T) {
	e := newEnv(t)
	d := dial(t, e)
	tok, _ := e.dl.Mint(download.Grant{TaskID: "t1", DeviceID: "d1", Attempt: 1, PackageID: "fw"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	get := func(last string) (codes.Code, []byte) {
		t.Helper()
		req, err := d.conn.NewGetRequest(ctx, "/fw")
		if err != nil {
			t.Fatal(err)
		}
		req.AddOptionString(message.URIPath, last)
		buf := make([]byte, 4)
		n, _ := message.EncodeUint32(buf, 2<<4|5) // block 2 of 512 bytes
		req.AddOptionBytes(message.Block2, buf[:n])
		res, err := d.conn.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body())
		return res.Code(), b
	}
	if c, b := get("fw?t=" + tok); c != codes.Content || !bytes.Equal(b, e.content[1024:1536]) {
		t.Fatalf("the token in the last Uri-Path option: %v with %d bytes, want block 2", c, len(b))
	}
	if c, _ := get("fw?t=forged"); c != codes.Unauthorized {
		t.Fatalf("a forged token in the last Uri-Path option: %v, want 4.01", c)
	}
}

// TestCoapClient: libcoap's coap-client (Debian libcoap3-bin, installed by
// .ci/run) downloads the package block-wise, and fetches block N alone, as
// the README shows, at the URI the server wrote to a device with a
// 128-character ID (issue 20, item 2): Debian's coap-client (libcoap 4.3.1)
// drops a Uri-Query of more than about 98 bytes, so the token travels in
// the path.
func TestCoapClient(t *testing.T) {
	bin := coapClient(t)
	e := newEnv(t)
	addLongDevice(t, e)
	uri := writeLongURI(t, e, registerLong(t, e))
	fetch := func(block string) []byte {
		t.Helper()
		out := filepath.Join(t.TempDir(), "fw.bin")
		cmd := exec.Command(bin, "-m", "get", "-b", block, "-o", out, uri)
		msg, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("coap-client -b %s %s: %v: %s", block, uri, err, msg)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatalf("coap-client -b %s %s: %v: %s", block, uri, err, msg)
		}
		return b
	}
	if got := fetch("1024"); sha256.Sum256(got) != e.sum {
		t.Fatalf("coap-client downloaded %d bytes with another SHA-256", len(got))
	}
	if got := fetch("5,256"); !bytes.Equal(got, e.content[5*256:6*256]) {
		t.Fatalf("block 5 of 256 bytes: got %d bytes, not those of the block", len(got))
	}
}
