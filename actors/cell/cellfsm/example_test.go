package cellfsm_test

import (
	"fmt"

	"github.com/otafleet/otafleet/actors/cell/cellfsm"
	"github.com/otafleet/otafleet/messages"
)

func Example() {
	cfg := cellfsm.DefaultConfig()
	s := cellfsm.New("cell-42")
	rsrp, sinr := int32(-120), int32(3) // poor: costs the whole budget
	s, res, err := cellfsm.Step(cfg, s, &messages.CellInput{
		AtUnixNano: 1,
		Kind: &messages.CellInput_RequestPermit{RequestPermit: &messages.RequestPermit{
			CellId: "cell-42", DeviceId: "dev-1", Rsrp: &rsrp, Sinr: &sinr,
		}},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(len(res.Events), "events;", "grant to", res.Effects[0].GetGrant().GetDeviceId())
	fmt.Println("used", s.Used(), "of", cfg.Budget, "holders", s.Holders(), "waiting", s.Waiting())
	// Output:
	// 2 events; grant to dev-1
	// used 50 of 50 holders 1 waiting 0
}
