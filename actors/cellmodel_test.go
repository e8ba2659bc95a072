package actors_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/messages"
)

// TestTaskCellsAreTheActorsView (issue 24): at every step of two campaigns
// sharing three cells of mixed coverage, TaskCells answers for each task
// exactly the cells whose actor holds or queues its devices, each as the
// view of the state the cell's actor itself answers.
func TestTaskCellsAreTheActorsView(t *testing.T) {
	specs := fleet(60, 3, messages.Protocol_PROTOCOL_LWM2M_FOTA)
	r := newFleetRig(t, specs)
	ctx := context.Background()
	all := ids(specs)
	for i, task := range []string{"ta", "tb"} {
		if err := r.e.CreateTask(ctx, createTask(task, messages.Protocol_PROTOCOL_LWM2M_FOTA, all[i*30:(i+1)*30], nil)); err != nil {
			t.Fatal(err)
		}
	}
	compared, saturated, shared := 0, 0, 0
	check := func() {
		t.Helper()
		for _, task := range []string{"ta", "tb"} {
			got := map[string]*actors.CellView{}
			for _, v := range r.e.TaskCells(task, "", 0) {
				got[v.CellID] = v
			}
			for c := range 3 {
				cell := fmt.Sprintf("cell-%02d", c)
				st, err := r.e.Cell(ctx, cell)
				if err != nil {
					t.Fatal(err)
				}
				want := actors.CellViewOf(st, 50)
				if want.TaskHolding[task]+want.TaskWaiting[task] == 0 {
					if got[cell] != nil {
						t.Fatalf("%s at %v: TaskCells lists %s, where the task has no device: %+v", task, r.clk.Now(), cell, got[cell])
					}
					continue
				}
				if !reflect.DeepEqual(got[cell], want) {
					t.Fatalf("%s at %v, %s:\npublished %+v\nactor     %+v", task, r.clk.Now(), cell, got[cell], want)
				}
				compared++
				if want.Saturated() {
					saturated++
				}
				if want.TaskHolding["ta"]+want.TaskWaiting["ta"] > 0 && want.TaskHolding["tb"]+want.TaskWaiting["tb"] > 0 {
					shared++
				}
			}
		}
	}
	r.runUntil(func() bool {
		check()
		return r.task("ta").Status.Final() && r.task("tb").Status.Final()
	}, 24*time.Hour)
	check()
	if compared == 0 || saturated == 0 || shared == 0 {
		t.Fatalf("%d views compared, %d saturated, %d shared by both tasks: the campaign did not exercise the views", compared, saturated, shared)
	}
	t.Logf("%d views compared, %d saturated, %d shared", compared, saturated, shared)
}
