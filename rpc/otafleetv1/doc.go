// Package otafleetv1 holds the generated Go types of otafleet's Connect API,
// the protobuf package otafleet.v1 defined under rpc/proto/otafleet/v1:
// products, devices, groups, packages and tasks. Its subpackage
// otafleetv1connect holds the generated Connect handlers and clients, which
// also speak gRPC and gRPC-Web.
//
// Field names in Connect JSON are the lowerCamelCase forms of the proto names
// (task_id becomes taskId) and enum values are their full names
// (TASK_STATUS_SUCCESS). Field numbers and enum values only ever grow.
//
// The generated code is committed; regenerate it from the repository root
// with
//
//	go generate ./rpc/otafleetv1
//
// which needs protoc (with its well-known types), protoc-gen-go and
// protoc-gen-connect-go on PATH (see the README).
package otafleetv1

//go:generate sh -c "cd ../.. && protoc -I rpc/proto --go_out=. --go_opt=module=github.com/otafleet/otafleet --connect-go_out=. --connect-go_opt=module=github.com/otafleet/otafleet rpc/proto/otafleet/v1/cluster.proto rpc/proto/otafleet/v1/common.proto rpc/proto/otafleet/v1/device.proto rpc/proto/otafleet/v1/group.proto rpc/proto/otafleet/v1/package.proto rpc/proto/otafleet/v1/product.proto rpc/proto/otafleet/v1/task.proto"
