package actors

import (
	"encoding/binary"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
)

// keeper is a machine that keeps its state as records of its stream
// (persistence.Record), written in the batch of each step's events, instead
// of snapshots: a step writes what it changed, and recovery reads the
// records, with no events to replay.
type keeper interface {
	// records returns the records that bring the stored state from the
	// machine's committed state to next, the state after events. The
	// machine counts them as written: if the append fails the actor stops.
	records(next any, events []proto.Message) ([]persistence.Record, error)
	// all returns the records of the whole committed state (to convert a
	// stream recovered from a snapshot and events); none before it exists.
	all() ([]persistence.Record, error)
	// load rebuilds the state from the stream's records; false when there
	// are none (a new stream, or one written before records existed).
	load(recs []persistence.Record) (bool, error)
}

// A task's records. Keys are short: the stored key repeats the stream.
//
//	d            the definition (the TaskCreated as journaled)
//	h            the header (taskfsm.Header)
//	r<pos:4 BE>  the row of the sub-task at pos (taskfsm.Row)
const (
	typeTaskDefinition uint32 = persistence.RecordTypeState + 1
	typeTaskHeader     uint32 = persistence.RecordTypeState + 2
	typeTaskRow        uint32 = persistence.RecordTypeState + 3
	recordV1           uint32 = 1
)

var (
	keyTaskDefinition = []byte("d")
	keyTaskHeader     = []byte("h")
)

func taskRowKey(pos int) []byte { return binary.BigEndian.AppendUint32([]byte{'r'}, uint32(pos)) }

func encodeRecord(key []byte, typ uint32, m proto.Message) (persistence.Record, error) {
	b, err := deterministic.Marshal(m)
	if err != nil {
		return persistence.Record{}, err
	}
	return persistence.Record{Key: key, Type: typ, Version: recordV1, Payload: b}, nil
}

// taskRecords returns the records of s: its definition if def, its header
// if it differs from *last (which it then replaces), and the rows at rows.
func taskRecords(s taskfsm.State, def bool, last **messages.TaskHeader, rows []int) ([]persistence.Record, error) {
	out := make([]persistence.Record, 0, len(rows)+2)
	add := func(key []byte, typ uint32, m proto.Message) error {
		r, err := encodeRecord(key, typ, m)
		out = append(out, r)
		return err
	}
	if def {
		if err := add(keyTaskDefinition, typeTaskDefinition, s.Task()); err != nil {
			return nil, err
		}
	}
	if h := taskfsm.Header(s); !proto.Equal(h, *last) {
		if err := add(keyTaskHeader, typeTaskHeader, h); err != nil {
			return nil, err
		}
		*last = h
	}
	for _, pos := range rows {
		if err := add(taskRowKey(pos), typeTaskRow, taskfsm.Row(s, pos)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// loadTask rebuilds a task state from its records; false if there are none.
func loadTask(recs []persistence.Record) (taskfsm.State, *messages.TaskHeader, bool, error) {
	if len(recs) == 0 {
		return taskfsm.State{}, nil, false, nil
	}
	var def *messages.TaskCreated
	var h *messages.TaskHeader
	var rows []*messages.TaskRow
	for _, r := range recs {
		if r.Version != recordV1 {
			return taskfsm.State{}, nil, false, fmt.Errorf("task record %q of version %d", r.Key, r.Version)
		}
		var m proto.Message
		switch {
		case string(r.Key) == string(keyTaskDefinition) && r.Type == typeTaskDefinition:
			def = &messages.TaskCreated{}
			m = def
		case string(r.Key) == string(keyTaskHeader) && r.Type == typeTaskHeader:
			h = &messages.TaskHeader{}
			m = h
		case len(r.Key) == 5 && r.Key[0] == 'r' && r.Type == typeTaskRow:
			// Rows sort after the definition and the header.
			pos := int(binary.BigEndian.Uint32(r.Key[1:]))
			if h == nil || pos >= int(h.GetSubtasks()) {
				return taskfsm.State{}, nil, false, fmt.Errorf("task record %q: a row before the header or past its %d sub-tasks", r.Key, h.GetSubtasks())
			}
			if rows == nil {
				rows = make([]*messages.TaskRow, h.GetSubtasks())
			}
			row := &messages.TaskRow{}
			rows[pos] = row
			m = row
		default:
			return taskfsm.State{}, nil, false, fmt.Errorf("unknown task record %q of type %d", r.Key, r.Type)
		}
		if err := proto.Unmarshal(r.Payload, m); err != nil {
			return taskfsm.State{}, nil, false, fmt.Errorf("task record %q: %w", r.Key, err)
		}
	}
	s, err := taskfsm.FromRecords(def, h, rows)
	if err != nil {
		return taskfsm.State{}, nil, false, err
	}
	return s, h, true, nil
}

var _ keeper = (*taskMachine)(nil)
