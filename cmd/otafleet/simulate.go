package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/bench/sim/memtransport"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/transport"
)

// simProtocols maps --simulate-protocol to the devices' flows.
func simProtocol(kind string, i int) messages.Protocol {
	switch kind {
	case "mqtt":
		return messages.Protocol_PROTOCOL_MQTT
	case "pcp":
		return messages.Protocol_PROTOCOL_LWM2M_PCP
	case "mixed":
		return []messages.Protocol{messages.Protocol_PROTOCOL_MQTT, messages.Protocol_PROTOCOL_LWM2M_FOTA, messages.Protocol_PROTOCOL_LWM2M_PCP}[i%3]
	default:
		return messages.Protocol_PROTOCOL_LWM2M_FOTA
	}
}

// startSimulation runs --simulate N scripted devices in process (sim-0 ...
// sim-N-1, spread over --simulate-cells cells with mixed coverage), whose
// durable facts live in DIR/sim-state so that a restarted server meets the
// same devices. With --simulate-campaign it creates, once, one task per
// protocol upgrading them to version 2.0, and logs the campaign's progress
// until it ends. The devices' sessions are counted in presence, as the
// real transports count theirs.
func startSimulation(cfg serveConfig, engine *actors.Engine, reg persistence.Registry, presence *transport.Presence, clk clock.Clock, logger *slog.Logger) (*simulation, error) {
	d := cfg.SimulateDelay
	tr, err := memtransport.New(memtransport.Config{
		Delays:    memtransport.Delays{Network: d / 5, Response: d, Download: 4 * d, Segment: d / 4, Install: 2 * d, Reconnect: 4 * d},
		StateFile: filepath.Join(cfg.DataDir, "sim-state"),
		OnUpgrade: func(id, version string) { logger.Info("simulated device upgraded", "device", id, "version", version) },
	}, clk, simPresence{next: engine, reg: reg, presence: presence}, logger)
	if err != nil {
		return nil, fmt.Errorf("simulation: %w", err)
	}
	i32 := func(v int32) *int32 { return &v }
	byProtocol := map[messages.Protocol][]string{}
	for i := 0; i < cfg.Simulate; i++ {
		p := simProtocol(cfg.SimulateProtocol, i)
		spec := memtransport.DeviceSpec{
			ID: fmt.Sprintf("sim-%d", i), Protocol: p, FwVersion: "1.0", SwVersion: "1.0",
			CellID: fmt.Sprintf("cell-%d", i%cfg.SimulateCells),
		}
		switch q := i % 20; {
		case q < 14:
			spec.RSRP, spec.SINR = i32(-90), i32(12)
		case q < 18:
			spec.RSRP, spec.SINR = i32(-110), i32(2)
		case q < 19:
			spec.RSRP, spec.SINR = i32(-121), i32(-5)
		default:
			spec.RSRP = i32(-95)
		}
		if err := tr.Add(spec); err != nil {
			tr.Close()
			return nil, fmt.Errorf("simulation: %w", err)
		}
		byProtocol[p] = append(byProtocol[p], spec.ID)
	}
	return &simulation{tr: tr, byProtocol: byProtocol}, nil
}

// simPackageID names the campaign's package. The simulated devices do not
// download it, so it has no registry entry.
const simPackageID = "sim-package"

// simPresence counts the simulated devices' sessions in a Presence on
// their way to the engine: Up at Connected (with the device's product when
// it is registered already; CreateDevices sets it otherwise), Down at
// Disconnected. A simulated device's uplinks come one at a time, in order.
type simPresence struct {
	next     transport.Uplinks
	reg      persistence.Registry
	presence *transport.Presence
}

func (s simPresence) Deliver(ctx context.Context, id string, in *messages.DeviceInput) error {
	switch in.GetKind().(type) {
	case *messages.DeviceInput_Connected:
		product := ""
		if d, err := s.reg.GetDevice(ctx, id); err == nil {
			product = d.ProductID
		}
		s.presence.Up(transport.ViaSim, id, product)
	case *messages.DeviceInput_Disconnected:
		s.presence.Down(transport.ViaSim, id)
	}
	return s.next.Deliver(ctx, id, in)
}

// simulation is the running --simulate fleet.
type simulation struct {
	tr         *memtransport.Transport
	byProtocol map[messages.Protocol][]string
}

func (s *simulation) Close() error { return s.tr.Close() }

// run connects the devices (as devices reconnect to a restarted server) and,
// with --simulate-campaign, creates the campaign once and watches it. It runs
// after the engine recovered, so recovered actors find their devices.
func (s *simulation) run(ctx context.Context, cfg serveConfig, engine *actors.Engine, reg persistence.Registry, clk clock.Clock, logger *slog.Logger) error {
	tr, byProtocol := s.tr, s.byProtocol
	if err := tr.ConnectAll(ctx); err != nil {
		return fmt.Errorf("simulation: %w", err)
	}
	if !cfg.SimulateCampaign {
		return nil
	}
	var tasks []string
	for p, devs := range byProtocol {
		id := "sim-campaign-" + strings.ToLower(strings.TrimPrefix(p.String(), "PROTOCOL_"))
		id = strings.ReplaceAll(id, "_", "-")
		tasks = append(tasks, id)
		if _, err := engine.Task(ctx, id); err == nil {
			continue // created by an earlier run
		} else if !errors.Is(err, actors.ErrNotFound) {
			return err
		}
		// Listed by ListTasks like the API's tasks (index entry first).
		if err := reg.PutTask(ctx, persistence.TaskRecord{ID: id, Name: id, PackageID: simPackageID, Created: clk.Now()}); err != nil {
			return fmt.Errorf("simulation: indexing %s: %w", id, err)
		}
		tt := messages.TaskType_TASK_TYPE_FIRMWARE_UPGRADE
		if p == messages.Protocol_PROTOCOL_LWM2M_PCP {
			tt = messages.TaskType_TASK_TYPE_SOFTWARE_UPGRADE
		}
		err := engine.CreateTask(ctx, &messages.CreateTask{
			TaskId: id, Name: id, TaskType: tt, Protocol: p, DeviceIds: devs,
			Package: &messages.Package{PackageId: simPackageID, Version: "2.0", Size: 4000, FileName: "sim.bin", SegmentSize: 500, CheckCode: 1},
			Policy:  &messages.Policy{RetryCount: 2, RetryIntervalMinutes: 1},
		})
		if err != nil {
			return fmt.Errorf("simulation: creating %s: %w", id, err)
		}
		logger.Info("simulated campaign created", "task", id, "devices", len(devs))
	}
	go watchCampaign(ctx, engine, tr, tasks, logger)
	return nil
}

// watchCampaign logs the simulated campaign's progress every second (real
// time: this is the binary) and a final summary once every task has ended.
func watchCampaign(ctx context.Context, engine *actors.Engine, tr *memtransport.Transport, tasks []string, logger *slog.Logger) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		done, success, total := 0, 0, 0
		for _, id := range tasks {
			v, err := engine.Task(ctx, id)
			if err != nil {
				if !errors.Is(err, persistence.ErrUnavailable) { // the store logs that once
					logger.Warn("campaign progress", "task", id, "error", err)
				}
				continue
			}
			total += v.Progress.Total
			success += v.Progress.Success
			if v.Status.Final() {
				done++
			}
		}
		logger.Info("simulated campaign progress", "succeeded", success, "devices", total)
		if done == len(tasks) {
			// Exactly once: no device installed twice or got a second Execute
			// (FOTA /5/0/2, PCP 0x17); repeated MQTT upgrade events (a device
			// that reconnected before reporting progress) are counted apart.
			twice, repeatedEvents := 0, 0
			var twiceIDs, twiceCounters []string
			for _, id := range tr.IDs() {
				dev, ok := tr.Device(id)
				if !ok {
					continue
				}
				if dev.Counters.Upgrades > 1 || dev.Counters.Executes > 1 || dev.Counters.PCPExecutes > 1 {
					twice++
					twiceIDs = append(twiceIDs, id)
					twiceCounters = append(twiceCounters, fmt.Sprintf("%s: %d installs, %d Executes, %d PCP 0x17, %d URI writes, %d downloads",
						id, dev.Counters.Upgrades, dev.Counters.Executes, dev.Counters.PCPExecutes, dev.Counters.URIWrites, dev.Counters.Downloads))
				}
				if dev.Counters.UpgradeEvents > 1 {
					repeatedEvents++
				}
			}
			st := tr.Stats()
			logger.Info("simulated campaign finished", "succeeded", success, "devices", total,
				"upgrades", st.Upgrades, "devices_upgraded_twice", twice, "mqtt_events_repeated", repeatedEvents,
				"twice_ids", twiceIDs, "twice_counters", twiceCounters)
			return
		}
	}
}
