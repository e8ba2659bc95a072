package actors_test

import (
	"context"
	"testing"
	"time"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/actors/cell/cellfsm"
	"github.com/otafleet/otafleet/internal/clock/clocktest"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence/memstore"
)

// The cell budget metrics.
const (
	metricBudget     = "otafleet_cell_budget_units"
	metricPeak       = "otafleet_cell_budget_units_peak"
	metricViolations = "otafleet_cell_budget_violations_total"
	metricInUse      = "otafleet_cell_budget_units_in_use"
)

// metric reads the value of the unlabelled gauge or counter name from the
// rig's registry.
func (r *rig) metric(name string) float64 {
	r.t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		r.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		if len(mf.GetMetric()) != 1 {
			r.t.Fatalf("%s has %d series, want 1", name, len(mf.GetMetric()))
		}
		m := mf.GetMetric()[0]
		switch {
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		}
		r.t.Fatalf("%s is neither a gauge nor a counter: %v", name, mf)
	}
	r.t.Fatalf("metric %s is not registered", name)
	return 0
}

// usedNow is the units the busiest cell holds now, and their sum over the
// cells, as the rig saw them through Deps.CellStepped.
func (r *rig) usedNow() (busiest, sum uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, u := range r.used {
		busiest, sum = max(busiest, u), sum+u
	}
	return busiest, sum
}

// mostUsed is the highest Used() the rig saw through Deps.CellStepped.
func (r *rig) mostUsed() uint32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var most uint32
	for _, p := range r.peak {
		most = max(most, p)
	}
	return most
}

// TestCellBudgetMetrics runs a FOTA campaign over 400 devices in 4 cells
// with mixed coverage (a few downloads fail once and are retried): the budget
// gauge shows the configured budget from the start, the in-use gauge is the
// busiest cell's units throughout, the peak gauge ends equal
// to the most units any cell was seen holding through Deps.CellStepped,
// within the budget, and no violation is counted.
func TestCellBudgetMetrics(t *testing.T) {
	specs := fleet(400, 4, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	for i := range specs {
		if i%40 == 0 {
			specs[i].Behaviour.FailDownloads = 1
		}
	}
	r := newFleetRig(t, specs)
	budget := cellfsm.DefaultConfig().Budget
	if got := r.metric(metricBudget); got != float64(budget) {
		t.Fatalf("%s = %v before any cell stepped, want %d", metricBudget, got, budget)
	}
	if got := r.metric(metricPeak); got != 0 {
		t.Fatalf("%s = %v before any cell stepped, want 0", metricPeak, got)
	}
	ctx := context.Background()
	if err := r.e.CreateTask(ctx, createTask("campaign", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), &messages.Policy{RetryCount: 1, RetryIntervalMinutes: 5})); err != nil {
		t.Fatal(err)
	}
	// The in-use gauge is the busiest cell's units, never their sum over
	// the cells, so that it reads against the per-cell budget.
	sumOverBudget := false
	r.runUntil(func() bool {
		busiest, sum := r.usedNow()
		if got := r.metric(metricInUse); got != float64(busiest) {
			t.Fatalf("%s = %v while the busiest cell holds %d units (%d in all cells)", metricInUse, got, busiest, sum)
		}
		sumOverBudget = sumOverBudget || sum > budget
		return r.finished("campaign")()
	}, 24*time.Hour)
	if !sumOverBudget {
		t.Error("weak test: the cells together never held more than one cell's budget")
	}
	if v := r.task("campaign"); v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS || v.Progress.Success != 400 {
		t.Fatalf("task: %v %+v", v.Status, v.Progress)
	}

	most := r.mostUsed()
	peak := r.metric(metricPeak)
	if peak != float64(most) {
		t.Errorf("%s = %v, the most units a cell held (seen through CellStepped) = %d", metricPeak, peak, most)
	}
	if peak > float64(budget) {
		t.Errorf("%s = %v exceeds the budget %d", metricPeak, peak, budget)
	}
	if most < budget/2 {
		t.Errorf("weak test: the cells never held more than %d of %d units", most, budget)
	}
	if got := r.metric(metricViolations); got != 0 {
		t.Errorf("%s = %v, want 0", metricViolations, got)
	}
	if got := r.metric(metricBudget); got != float64(budget) {
		t.Errorf("%s = %v after the campaign, want %d", metricBudget, got, budget)
	}
	if got := r.metric(metricInUse); got != 0 {
		t.Errorf("%s = %v after the campaign, want 0", metricInUse, got)
	}
}

// TestCellBudgetViolationsCounted: an engine with a budget of 200 units per
// cell stops while its one cell lends out more than 50; the engine that
// recovers it with the default budget of 50 replays a state beyond its budget
// (cellfsm's Check reports it until enough devices release). Every such cell
// step is counted, the peak shows the recovered units, and the campaign
// still finishes.
func TestCellBudgetViolationsCounted(t *testing.T) {
	clk := clocktest.New(epoch)
	specs := fleet(120, 1, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	tr, up := newFleetTransport(t, clk, specs)
	store := memstore.New()
	big := actors.Config{PassivateAfter: 10 * time.Minute, Cell: cellfsm.DefaultConfig()}
	big.Cell.Budget = 200
	r := newRigConfig(t, big, clk, store, tr, up)
	ctx := context.Background()
	if err := tr.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	if got := r.metric(metricBudget); got != 200 {
		t.Fatalf("%s = %v, want 200", metricBudget, got)
	}
	if err := r.e.CreateTask(ctx, createTask("t", messages.Protocol_PROTOCOL_LWM2M_FOTA, ids(specs), nil)); err != nil {
		t.Fatal(err)
	}
	const cell = "cell-00"
	r.runUntil(func() bool {
		c, err := r.e.Cell(ctx, cell)
		return err == nil && c.Used() > 50 && c.Holders() > 1
	}, time.Hour)
	held := r.mostUsed()
	if got := r.metric(metricPeak); got != float64(held) || held <= 50 || held > 200 {
		t.Fatalf("before the restart: %s = %v, most used %d", metricPeak, got, held)
	}
	if got := r.metric(metricViolations); got != 0 {
		t.Fatalf("before the restart: %s = %v, want 0", metricViolations, got)
	}
	c, err := r.e.Cell(ctx, cell)
	if err != nil {
		t.Fatal(err)
	}
	recovered := c.Used()
	r.e.Stop() // the new engine recovers the cell as journaled
	up.Set(nil)

	r2 := newRig(t, clk, store, tr, up) // the default budget, 50
	t.Cleanup(r2.e.Stop)
	r2.e.Settle()
	if got := r2.metric(metricBudget); got != 50 {
		t.Fatalf("%s = %v, want 50", metricBudget, got)
	}
	if got := r2.metric(metricPeak); got != float64(recovered) {
		t.Errorf("after recovery: %s = %v, want the recovered %d units", metricPeak, got, recovered)
	}
	if got := r2.metric(metricViolations); got < 1 {
		t.Errorf("after recovery of %d units over a budget of 50: %s = %v", recovered, metricViolations, got)
	}
	r2.runUntil(r2.finished("t"), 48*time.Hour)
	if v := r2.task("t"); v.Status != messages.TaskStatus_TASK_STATUS_SUCCESS || v.Progress.Success != 120 {
		t.Fatalf("after recovery: %v %+v", v.Status, v.Progress)
	}
	r2.mu.Lock()
	seen := len(r2.violations) // each a step whose state failed Check
	r2.mu.Unlock()
	if got := r2.metric(metricViolations); got != float64(seen) || seen == 0 {
		t.Errorf("%s = %v, the rig saw %d steps beyond the budget", metricViolations, got, seen)
	}
	if got, most := r2.metric(metricPeak), r2.mostUsed(); got != float64(most) || most != recovered {
		t.Errorf("%s = %v, most used %d, recovered %d", metricPeak, got, most, recovered)
	}
	t.Logf("recovered %d units over a budget of 50; %d violating cell steps", recovered, seen)
}
