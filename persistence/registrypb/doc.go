// Package registrypb holds the protobuf records in which pebblestore keeps the
// registry (products, devices, groups, package metadata, blob headers). The
// Go code is generated from registry.proto and committed; regenerate it with
//
//	go generate ./persistence/registrypb
//
// (protoc and protoc-gen-go on PATH). Field numbers and enum values only ever
// grow, so stored records keep decoding.
package registrypb

//go:generate sh -c "cd ../.. && protoc --go_out=. --go_opt=module=github.com/otafleet/otafleet persistence/registrypb/registry.proto"
