package cellfsm

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	"github.com/otafleet/otafleet/messages"
)

// TestScenarios runs the transcripts in testdata/scenarios. Each file starts
// with DefaultConfig and New("c1"). The DSL:
//
//	config key=value...            change the config (keys: budget, cost-good, cost-medium,
//	                               cost-poor, cost-cell-only, rsrp-max, rsrp-good, rsrp-medium,
//	                               rsrp-poor, sinr-max, sinr-good, sinr-medium, sinr-poor)
//	new [cell=c1]                  start over with an empty cell and an empty journal
//	request dev=IDS [rsrp=N] [sinr=N] [cell-only] [job=TASK#ATTEMPT] [cell=C] [at=+D]
//	release dev=IDS [cell=C] [at=+D]
//	classify [rsrp=N] [sinr=N] [cell-only]
//	state                          print the state
//	restart                        rebuild the state from the journal (fold of Evolve), print Resume
//	admit [at=+D]                  run Admit
//
// IDS is one ID, a list a,b,c or (a,b,c), each a range like g01..g50 (same prefix and
// digit width). at= is an offset from the transcript's time zero and sticks
// until changed. request/release print the events and effects of every
// device in order ("ignored" when there are none), then a summary line.
func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata/scenarios", func(t *testing.T, path string) {
		h := &harness{cfg: DefaultConfig(), s: New("c1"), at: messages.UnixNano(t0)}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			return h.run(t, d)
		})
	})
}

type harness struct {
	cfg     Config
	s       State
	at      int64
	journal []*messages.CellEvent
}

func (h *harness) run(t *testing.T, d *datadriven.TestData) string {
	if a, ok := d.Arg("at"); ok {
		dur, err := time.ParseDuration(strings.TrimPrefix(a.SingleVal(t), "+"))
		if err != nil {
			d.Fatalf(t, "bad at: %v", err)
		}
		h.at = messages.UnixNano(t0.Add(dur))
	}
	switch d.Cmd {
	case "config":
		cfg := h.cfg
		for _, a := range d.CmdArgs {
			v, err := strconv.ParseInt(a.SingleVal(t), 10, 64)
			if err != nil {
				d.Fatalf(t, "bad %s: %v", a.Key, err)
			}
			if p := configField(&cfg, a.Key); p != nil {
				*p = int32(v)
			} else if q := configCost(&cfg, a.Key); q != nil {
				*q = uint32(v)
			} else {
				d.Fatalf(t, "unknown config key %q", a.Key)
			}
		}
		if err := cfg.Validate(); err != nil {
			return "error: " + err.Error() + "\n"
		}
		h.cfg = cfg
		return "ok\n"
	case "new":
		cell := "c1"
		if d.HasArg("cell") {
			d.ScanArgs(t, "cell", &cell)
		}
		h.s, h.journal = New(cell), nil
		return "ok\n"
	case "request", "release":
		cell := h.s.Cell
		if d.HasArg("cell") {
			d.ScanArgs(t, "cell", &cell)
		}
		var out strings.Builder
		for _, dev := range devices(t, d) {
			var in *messages.CellInput
			if d.Cmd == "request" {
				rsrp, sinr := optInt(t, d, "rsrp"), optInt(t, d, "sinr")
				j := optJob(t, d)
				in = reqJobIn(h.at, cell, dev, j.TaskID, j.Attempt, rsrp, sinr, d.HasArg("cell-only"))
			} else {
				in = relIn(h.at, cell, dev)
			}
			s, res, err := step(t, h.cfg, h.s, in)
			h.s = s
			switch {
			case err != nil:
				fmt.Fprintf(&out, "error: %v\n", err)
			case len(res.Events)+len(res.Effects) == 0:
				fmt.Fprintf(&out, "ignored %s\n", dev)
			default:
				out.WriteString(fmtResult(res))
			}
			h.journal = append(h.journal, res.Events...)
			if err := h.s.Check(h.cfg); err != nil {
				fmt.Fprintf(&out, "check: %v\n", err)
			}
		}
		fmt.Fprintf(&out, "-> used %d/%d, holding %d, waiting %d\n", h.s.Used(), h.cfg.Budget, h.s.Holders(), h.s.Waiting())
		return out.String()
	case "classify":
		l := Classify(h.cfg, optInt(t, d, "rsrp"), optInt(t, d, "sinr"), d.HasArg("cell-only"))
		return fmt.Sprintf("level=%s cost=%d\n", levelName(l), Cost(h.cfg, l))
	case "state":
		out := dump(h.s)
		if err := h.s.Check(h.cfg); err != nil {
			out += fmt.Sprintf("check: %v\n", err)
		}
		return out
	case "restart":
		s := New(h.s.Cell)
		for _, e := range h.journal {
			s = Evolve(s, e)
		}
		if got, want := dump(s), dump(h.s); got != want {
			d.Fatalf(t, "replayed state differs:\n%s\nlive:\n%s", got, want)
		}
		h.s = s
		var out strings.Builder
		for _, e := range Resume(s) {
			out.WriteString(fmtEffect(e) + "\n")
		}
		if out.Len() == 0 {
			return "no effects\n"
		}
		return out.String()
	case "admit":
		s, res, err := Admit(h.cfg, h.s, h.at)
		if err != nil {
			return "error: " + err.Error() + "\n"
		}
		h.s = s
		h.journal = append(h.journal, res.Events...)
		out := fmtResult(res)
		if out == "" {
			out = "nothing to admit\n"
		}
		if err := h.s.Check(h.cfg); err != nil {
			out += fmt.Sprintf("check: %v\n", err)
		}
		return out + fmt.Sprintf("-> used %d/%d, holding %d, waiting %d\n", h.s.Used(), h.cfg.Budget, h.s.Holders(), h.s.Waiting())
	default:
		d.Fatalf(t, "unknown command %q", d.Cmd)
		return ""
	}
}

func configField(c *Config, key string) *int32 {
	return map[string]*int32{
		"rsrp-max": &c.RSRPMax, "rsrp-good": &c.RSRPGoodMin, "rsrp-medium": &c.RSRPMediumMin, "rsrp-poor": &c.RSRPPoorMin,
		"sinr-max": &c.SINRMax, "sinr-good": &c.SINRGoodMin, "sinr-medium": &c.SINRMediumMin, "sinr-poor": &c.SINRPoorMin,
	}[key]
}

func configCost(c *Config, key string) *uint32 {
	return map[string]*uint32{
		"budget": &c.Budget, "cost-good": &c.CostGood, "cost-medium": &c.CostMedium,
		"cost-poor": &c.CostPoor, "cost-cell-only": &c.CostCellOnly,
	}[key]
}

func optInt(t *testing.T, d *datadriven.TestData, key string) *int32 {
	if !d.HasArg(key) {
		return nil
	}
	var v int
	d.ScanArgs(t, key, &v)
	return i32(int32(v))
}

// optJob reads job=TASK#ATTEMPT; the zero Job when absent.
func optJob(t *testing.T, d *datadriven.TestData) Job {
	if !d.HasArg("job") {
		return Job{}
	}
	var v string
	d.ScanArgs(t, "job", &v)
	task, att, ok := strings.Cut(v, "#")
	n, err := strconv.ParseUint(att, 10, 32)
	if !ok || err != nil {
		d.Fatalf(t, "bad job %q: want TASK#ATTEMPT", v)
	}
	return Job{TaskID: task, Attempt: uint32(n)}
}

// devices expands the dev argument: a list of IDs, each possibly a range
// such as g01..g50.
func devices(t *testing.T, d *datadriven.TestData) []string {
	a, ok := d.Arg("dev")
	if !ok {
		d.Fatalf(t, "missing dev=")
	}
	var out []string
	var vals []string
	for _, v := range a.Vals {
		vals = append(vals, strings.Split(v, ",")...)
	}
	for _, v := range vals {
		v = strings.TrimSpace(v)
		lo, hi, isRange := strings.Cut(v, "..")
		if !isRange {
			out = append(out, v)
			continue
		}
		p := strings.TrimRight(lo, "0123456789")
		if !strings.HasPrefix(hi, p) || len(lo) != len(hi) {
			d.Fatalf(t, "bad range %q", v)
		}
		from, err1 := strconv.Atoi(lo[len(p):])
		to, err2 := strconv.Atoi(hi[len(p):])
		if err1 != nil || err2 != nil || from > to {
			d.Fatalf(t, "bad range %q", v)
		}
		for i := from; i <= to; i++ {
			out = append(out, fmt.Sprintf("%s%0*d", p, len(lo)-len(p), i))
		}
	}
	return out
}
