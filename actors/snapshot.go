package actors

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors/cell/cellfsm"
	"github.com/otafleet/otafleet/actors/device/devicefsm"
	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
)

// Snapshot envelope types and the version of their payload encoding.
const (
	typeDeviceSnapshot uint32 = persistence.SnapshotTypeState + 1
	typeCellSnapshot   uint32 = persistence.SnapshotTypeState + 2
	typeTaskSnapshot   uint32 = persistence.SnapshotTypeState + 3
	snapshotV1         uint32 = 1
)

var deterministic = proto.MarshalOptions{Deterministic: true}

func encodeSnapshot(typ uint32, m proto.Message) (persistence.Snapshot, error) {
	b, err := deterministic.Marshal(m)
	if err != nil {
		return persistence.Snapshot{}, err
	}
	return persistence.Snapshot{Type: typ, Version: snapshotV1, Payload: b}, nil
}

func checkSnapshot(snap persistence.Snapshot, typ uint32) error {
	if snap.Type != typ || snap.Version != snapshotV1 {
		return fmt.Errorf("snapshot type %d version %d, want type %d version %d", snap.Type, snap.Version, typ, snapshotV1)
	}
	return nil
}

func snapshotDevice(s devicefsm.State) (persistence.Snapshot, error) {
	return encodeSnapshot(typeDeviceSnapshot, devicefsm.Snapshot(s))
}

func restoreDevice(m *deviceMachine, snap persistence.Snapshot) error {
	if err := checkSnapshot(snap, typeDeviceSnapshot); err != nil {
		return err
	}
	p := &messages.DeviceSnapshot{}
	if err := proto.Unmarshal(snap.Payload, p); err != nil {
		return err
	}
	s, err := devicefsm.FromSnapshot(p)
	if err != nil {
		return err
	}
	m.s = s
	return nil
}

func snapshotCell(s cellfsm.State) (persistence.Snapshot, error) {
	return encodeSnapshot(typeCellSnapshot, cellfsm.Snapshot(s))
}

func restoreCell(m *cellMachine, snap persistence.Snapshot) error {
	if err := checkSnapshot(snap, typeCellSnapshot); err != nil {
		return err
	}
	p := &messages.CellSnapshot{}
	if err := proto.Unmarshal(snap.Payload, p); err != nil {
		return err
	}
	s, err := cellfsm.FromSnapshot(p)
	if err != nil {
		return err
	}
	m.s = s
	return nil
}

func snapshotTask(s taskfsm.State) (persistence.Snapshot, error) {
	return encodeSnapshot(typeTaskSnapshot, taskfsm.Snapshot(s))
}

func restoreTask(m *taskMachine, snap persistence.Snapshot) error {
	if err := checkSnapshot(snap, typeTaskSnapshot); err != nil {
		return err
	}
	p := &messages.TaskSnapshot{}
	if err := proto.Unmarshal(snap.Payload, p); err != nil {
		return err
	}
	s, err := taskfsm.FromSnapshot(p)
	if err != nil {
		return err
	}
	m.s = s
	return nil
}
