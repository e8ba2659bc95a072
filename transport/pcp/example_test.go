package pcp_test

import (
	"fmt"

	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/transport/pcp"
)

// A platform notifies a device of version 2.0, and the device asks for its
// first segment.
func Example() {
	notify, err := pcp.EncodeNotify(pcp.NotifyNewVersion{
		Version:      "2.0",
		SegmentSize:  messages.PcpDefaultSegmentSize,
		SegmentCount: pcp.SegmentCount(1234, messages.PcpDefaultSegmentSize),
		CheckCode:    0x3132,
	})
	if err != nil {
		panic(err)
	}
	fmt.Printf("downlink %X\n", notify)

	// The device side, as a simulator would write it.
	m, err := pcp.DecodeDownlink(notify)
	if err != nil {
		panic(err)
	}
	n := m.(pcp.NotifyNewVersion)
	req, _ := pcp.EncodeSegmentRequest(pcp.SegmentRequest{Version: n.Version, SegmentNo: 0})

	// The platform side: an uplink from /19/0/0.
	if !pcp.IsPCP(req) {
		fmt.Println("business data")
		return
	}
	up, err := pcp.DecodeUplink(req)
	if err != nil {
		panic(err)
	}
	sr := up.(pcp.SegmentRequest)
	off, size, ok := pcp.SegmentRange(1234, n.SegmentSize, sr.SegmentNo)
	fmt.Printf("%v: %q segment %d of %d: bytes %d..%d (%v)\n", up.Code(), sr.Version, sr.SegmentNo, n.SegmentCount, off, off+int64(size), ok)
	// Output:
	// downlink FFFE011410BA0016322E300000000000000000000000000001F400033132
	// 0x15 (request package segment): "2.0" segment 0 of 3: bytes 0..500 (true)
}
