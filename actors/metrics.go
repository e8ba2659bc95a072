package actors

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/otafleet/otafleet/actors/task/taskfsm"
)

// metrics are the engine's Prometheus collectors.
type metrics struct {
	alive    *prometheus.GaugeVec
	appended *prometheus.CounterVec
	// duplicates counts device reports identical to the last one journaled.
	duplicates *prometheus.CounterVec
	// updatesSkipped counts registration updates of passivated devices,
	// dropped without waking them (Engine.Deliver).
	updatesSkipped prometheus.Counter
	commit         prometheus.Histogram
	subtasks       *prometheus.GaugeVec
	waiting        prometheus.Gauge

	// inUse exposes the units the busiest live cell holds now: used holds
	// each live cell's units (cells step on their own goroutines, hence
	// usedMu). One series, not one per cell, so that it reads against the
	// per-cell budget.
	usedMu sync.Mutex
	used   map[string]uint32
	inUse  prometheus.GaugeFunc

	// cellBudget is the configured per-cell budget; cellPeak exposes peak,
	// the most units one cell has held at once since the engine was built;
	// violations counts cell steps whose state failed cellfsm's Check.
	cellBudget prometheus.Gauge
	peak       atomic.Uint32
	cellPeak   prometheus.GaugeFunc
	violations prometheus.Counter

	// routed counts inputs sent to and received from other nodes of a
	// cluster; downlinksNoSession counts downlinks handed to a node that
	// holds no session for their device (sent to every node when the
	// device's route was unknown).
	routed *prometheus.CounterVec
	// fenced counts actors stopped because another activation wrote their
	// stream first (by kind).
	fenced             *prometheus.CounterVec
	downlinksNoSession prometheus.Counter
	// noAckWaited counts no_ack reports for another node's actor sent as
	// requests because that node had maxNoAckTold of them not yet stepped.
	noAckWaited prometheus.Counter
}

// newMetrics builds the collectors, registers them with reg (a private
// registry when nil) and sets the budget gauge to cellBudget.
func newMetrics(reg prometheus.Registerer, cellBudget uint32) (*metrics, error) {
	m := &metrics{
		alive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "otafleet_actors_alive", Help: "Live actors by kind (device, cell, task).",
		}, []string{"kind"}),
		appended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otafleet_events_appended_total", Help: "Events appended to the journal, by actor kind.",
		}, []string{"kind"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otafleet_uplinks_duplicate_total",
			Help: "Device reports identical to the last report journaled for the device (apart from their arrival time): acknowledged, not journaled again. By input kind.",
		}, []string{"kind"}),
		updatesSkipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otafleet_registration_updates_skipped_total",
			Help: "LwM2M registration updates of devices whose actor was passivated (no job): the presence they confirm is already recorded, so they woke no actor.",
		}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "otafleet_journal_commit_seconds", Help: "Latency of one synced journal append.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		subtasks: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "otafleet_subtasks", Help: "Sub-tasks of live tasks by status.",
		}, []string{"status"}),
		used: map[string]uint32{},
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "otafleet_cell_devices_waiting", Help: "Devices queued for a cell slot, summed over live cells.",
		}),
		cellBudget: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "otafleet_cell_budget_units", Help: "Radio budget units each cell lends out at once (the configured per-cell budget).",
		}),
		routed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otafleet_cluster_inputs_total", Help: "Actor inputs sent to (direction=sent) and taken from (received) other nodes of the cluster.",
		}, []string{"direction"}),
		fenced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otafleet_actors_fenced_total", Help: "Actors stopped because another activation of their stream (on another node, for a moment) wrote it first; by kind.",
		}, []string{"kind"}),
		downlinksNoSession: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otafleet_cluster_downlinks_no_session_total",
			Help: "Downlinks a node was handed for a device it holds no session for (a device actor that just moved sends to every node; one holds the session).",
		}),
		noAckWaited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otafleet_cluster_noack_reports_waited_total",
			Help: "Device reports marked no_ack sent to another node as requests, waited for, because that node had 1024 of them from this one not yet stepped (a device that floods, or a node that lags).",
		}),
		violations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otafleet_cell_budget_violations_total",
			Help: "Cell steps whose new state broke the cell budget invariant (more units in use than the budget, or inconsistent holders).",
		}),
	}
	m.inUse = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "otafleet_cell_budget_units_in_use", Help: "Radio budget units the busiest cell holds now (at most the per-cell budget).",
	}, func() float64 { return float64(m.busiest()) })
	m.cellPeak = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "otafleet_cell_budget_units_peak", Help: "The most radio budget units any single cell has held at once since the engine started.",
	}, func() float64 { return float64(m.peak.Load()) })
	m.cellBudget.Set(float64(cellBudget))
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	for _, c := range []prometheus.Collector{m.alive, m.appended, m.duplicates, m.updatesSkipped, m.commit, m.subtasks, m.inUse, m.waiting, m.cellBudget, m.cellPeak, m.violations, m.routed, m.fenced, m.downlinksNoSession, m.noAckWaited} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, errors.New("actors: metrics already registered: use one registry per engine")
			}
			return nil, err
		}
	}
	return m, nil
}

// addProgress adds (sign +1) or removes (-1) a task's counters from the gauges.
func (m *metrics) addProgress(p taskfsm.Progress, sign float64) {
	for status, n := range map[string]int{
		"waiting": p.Waiting, "processing": p.Processing, "success": p.Success, "fail": p.Fail,
		"fail_wait_retry": p.FailWaitRetry, "stopped": p.Stopped,
	} {
		if n != 0 {
			m.subtasks.WithLabelValues(status).Add(sign * float64(n))
		}
	}
}

// setUsed records the units a live cell holds; a cell that leaves memory
// (or holds none) is forgotten.
func (m *metrics) setUsed(cell string, used uint32) {
	m.usedMu.Lock()
	defer m.usedMu.Unlock()
	if used == 0 {
		delete(m.used, cell)
		return
	}
	m.used[cell] = used
}

// busiest is the most units a live cell holds now.
func (m *metrics) busiest() uint32 {
	m.usedMu.Lock()
	defer m.usedMu.Unlock()
	var most uint32
	for _, u := range m.used {
		most = max(most, u)
	}
	return most
}

// raisePeak records that a cell holds used units: the peak only grows. Cells
// commit on their own goroutines, hence the compare-and-swap.
func (m *metrics) raisePeak(used uint32) {
	for {
		p := m.peak.Load()
		if used <= p || m.peak.CompareAndSwap(p, used) {
			return
		}
	}
}
