// Package messages is otafleet's vocabulary: the identities, inputs, events,
// effects and failure reasons that cross actor boundaries. Everything that an
// actor journals or sends to another actor is a protobuf message defined here,
// so the same values can later cross nodes of a cluster unchanged.
//
// Inputs are what an actor is told (uplinks decoded by transports, commands,
// fired deadlines); events are past-tense facts appended to an actor's journal;
// effects are what the actor must do once its events are durable. Enum values
// and field numbers only ever grow at the end, so old journals still decode.
//
// It also names the protocol vocabulary those messages carry, in hand-written
// files, so that the device machine, the transports and the simulated
// devices share one copy: the LwM2M object and resource paths and the values
// of object 5 (lwm2m.go), and PCP's message codes, result codes and field
// sizes (pcp.go).
//
// The generated code is committed; regenerate it from the repository root with
//
//	go generate ./messages
//
// which needs protoc and protoc-gen-go (see the README).
package messages

//go:generate sh -c "cd .. && protoc --go_out=. --go_opt=module=github.com/otafleet/otafleet messages/common.proto messages/device.proto messages/cell.proto messages/task.proto messages/snapshot.proto messages/cluster.proto"
