package iotda

import (
	"testing"
	"time"
)

// BenchmarkDecodeUplink decodes the reports of an upgrade: a version report
// and a progress report, as a device publishes them.
//
//	go test ./transport/mqtt/iotda -run '^$' -bench DecodeUplink -benchmem
func BenchmarkDecodeUplink(b *testing.B) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	fw := "2.0"
	pr := 100
	version := EncodeVersionReport("meter-000001", &fw, nil, now)
	progress := EncodeProgress("meter-000001", Progress{ResultCode: 0, Progress: &pr, Version: "2.0", Description: "upgraded"}, now)
	b.ReportAllocs()
	for b.Loop() {
		for _, p := range [][]byte{version, progress} {
			if _, err := DecodeUplink("meter-000001", p); err != nil {
				b.Fatal(err)
			}
		}
	}
}
