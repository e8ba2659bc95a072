package lwm2m_test

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"

	"github.com/otafleet/otafleet/bench/sim/lwm2msim"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport/download"
)

// TestKeptGrantRevokedAtNextBlock (issue 21): with the download server
// keeping grants (as serve runs it), a FOTA download asks the engine once,
// on its first block, and every later block is served without asking; once
// the task is stopped, the engine's revocation reaches the download server
// and the very next block under the same handle is refused: 4.01, since
// the revocation deleted the handle's record (issue 21), and 4.03 once the
// same attempt's handle is written again, whose grant the engine refuses.
func TestKeptGrantRevokedAtNextBlock(t *testing.T) {
	var asks atomic.Int64
	s := newStack(t, func(c *download.Config) {
		authorize := c.Authorize
		c.Authorize = func(ctx context.Context, g download.Grant) error {
			asks.Add(1)
			return authorize(ctx, g)
		}
		c.KeepGrants = true
	})
	// The device stalls after two blocks (it restarts an hour later).
	devs := s.devices("r", 1, false, func(int) lwm2msim.Behaviour {
		return lwm2msim.Behaviour{StopAfterBlocks: 2, RestartDelay: time.Hour}
	})
	s.createTask("rv", s.fw, []string{"r0"})
	waitFor(t, "two blocks fetched", 60*time.Second, func() bool { return devs[0].Stats().BlocksFetched >= 2 })

	// Another socket asks for the next blocks with the device's handle.
	handle, err := s.dl.Handle(context.Background(), download.Grant{TaskID: "rv", DeviceID: "r0", Attempt: 1, PackageID: s.fw.ID})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := udp.Dial(s.srv.Addr(), options.WithBlockwise(false, blockwise.SZX1024, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d := &device{conn: conn}
	content := make([]byte, s.fw.Size)
	blob, err := s.store.OpenBlob(context.Background(), s.fw.ID)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = blob.ReadAt(content, 0)
	_ = blob.Close()
	for num := uint32(2); num < 5; num++ {
		res, b := getBlock(t, d, "/fw/"+s.fw.ID, num, 6, handle)
		if res.Code() != codes.Content || !bytes.Equal(b, content[num*1024:(num+1)*1024]) {
			t.Fatalf("block %d while the job runs: %v, %d bytes", num, res.Code(), len(b))
		}
	}
	if n := asks.Load(); n != 1 {
		t.Errorf("the engine was asked %d times for 5 blocks of one grant, want 1", n)
	}

	if err := s.eng.StopTask(context.Background(), "rv"); err != nil {
		t.Fatal(err)
	}
	if v := s.waitTask("rv"); v.Status != messages.TaskStatus_TASK_STATUS_STOPPED {
		t.Fatalf("task ended %v: %v", v.Status, outcomes(v))
	}
	// The revocation deleted the handle's record (issue 21): the handle
	// is unknown, refused without asking.
	if n := handleRecords(t, s); n != 0 {
		t.Errorf("%d handle records after the stop, want 0", n)
	}
	if res, _ := getBlock(t, d, "/fw/"+s.fw.ID, 5, 6, handle); res.Code() != codes.Unauthorized {
		t.Fatalf("the next block after the stop: %v, want 4.01", res.Code())
	}
	if n := asks.Load(); n != 1 {
		t.Errorf("the engine was asked %d times, want 1 (the unknown handle is not asked about)", n)
	}
	// The attempt's URI written again (a late write) gives the same
	// handle and a record again; the engine refuses its grant (4.03), and
	// that refusal deletes the record again.
	again, err := s.dl.Handle(context.Background(), download.Grant{TaskID: "rv", DeviceID: "r0", Attempt: 1, PackageID: s.fw.ID})
	if err != nil || again != handle {
		t.Fatalf("Handle again: %q, %v; want %q", again, err, handle)
	}
	if res, _ := getBlock(t, d, "/fw/"+s.fw.ID, 5, 6, handle); res.Code() != codes.Forbidden {
		t.Fatalf("the next block under the handle written again: %v, want 4.03", res.Code())
	}
	if n := asks.Load(); n != 2 {
		t.Errorf("the engine was asked %d times, want 2", n)
	}
	if n := handleRecords(t, s); n != 0 {
		t.Errorf("%d handle records after the refusal, want 0", n)
	}
}

// handleRecords counts the download handles' records in s's store.
func handleRecords(t *testing.T, s *stack) int {
	t.Helper()
	n := 0
	if err := s.store.ListSessions(context.Background(), "download-handle", func(string, []byte) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}
