package lwm2m_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/otafleet/otafleet/messages"
)

// TestRebootRegistrationAnsweredFirst (issue 20, item 7): a device that
// rebooted registers from a new address while the server still observes
// three resources at its old, dead one. The new registration is answered
// within CoAP's ACK_TIMEOUT (2 s), not after the cancellations of the old
// observations, which wait for the dead address up to a second each.
func TestRebootRegistrationAnsweredFirst(t *testing.T) {
	e := newEnv(t)
	old := dial(t, e)
	if res, err := old.register(t, "ep=d1&lt=600", links); err != nil || res.Code() != codes.Created {
		t.Fatalf("register: %v %v", res, err)
	}
	e.rec.next(t)
	paths := []string{messages.PathFirmwareVersion, messages.PathFotaState, messages.PathPCPUplink}
	for _, p := range paths {
		old.set(p, resource{message.TextPlain, []byte("0")})
		if err := e.srv.Send(context.Background(), &messages.Downlink{DeviceId: "d1", Kind: &messages.Downlink_Lwm2MObserve{Lwm2MObserve: &messages.Lwm2MObserve{Path: p}}}); err != nil {
			t.Fatal(err)
		}
		e.rec.next(t)
	}
	waitDevice(t, old, func() bool { return len(old.obsToken) == len(paths) })
	old.conn.Close() // the reboot: nothing answers at the old address

	rebooted := dial(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second) // ACK_TIMEOUT
	defer cancel()
	req, err := rebooted.conn.NewPostRequest(ctx, "/rd", message.AppLinkFormat, strings.NewReader(links))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"ep=d1", "lt=600"} {
		req.AddOptionString(message.URIQuery, q)
	}
	res, err := rebooted.conn.Do(req)
	if err != nil || res.Code() != codes.Created {
		t.Fatalf("the rebooted device's registration within 2 s: %v %v", res, err)
	}
	if got := e.rec.next(t); got != "d1 connected:{}" {
		t.Fatalf("after the reboot: %q", got)
	}
}
