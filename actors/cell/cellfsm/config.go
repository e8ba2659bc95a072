package cellfsm

import (
	"fmt"

	"github.com/otafleet/otafleet/messages"
)

// Config is a cell's radio budget: the coverage boundaries that grade a device
// and what each grade costs. The defaults (DefaultConfig) are those of spec 1.3
// and project decision 1. Each RSRP or SINR range is lo <= x < hi, except that
// the ceiling (RSRPMax, SINRMax) is an inclusive upper limit of the good range;
// a value above the ceiling or below the poor range's lower bound is outside
// all ranges and counts as poor, even when the other value is missing
// (Classify).
type Config struct {
	// RSRPMax is the highest RSRP (dBm) a device can report; above it a value
	// is nonsense and counts as poor. Default -44.
	RSRPMax int32
	// RSRPGoodMin is the lower bound (dBm, inclusive) of the good range. Default -105.
	RSRPGoodMin int32
	// RSRPMediumMin is the lower bound (dBm, inclusive) of the medium range. Default -115.
	RSRPMediumMin int32
	// RSRPPoorMin is the lower bound (dBm, inclusive) of the poor range. Default -125.
	// Below it a value is outside all ranges, which also counts as poor; it
	// matters only when the other value is missing: a value in the poor range
	// then leaves the device cell-ID-only, a value below it makes it poor.
	RSRPPoorMin int32

	// SINRMax is the highest SINR (dB) a device can report; above it a value
	// counts as poor. Default 30.
	SINRMax int32
	// SINRGoodMin is the lower bound (dB, inclusive) of the good range. Default 7.
	SINRGoodMin int32
	// SINRMediumMin is the lower bound (dB, inclusive) of the medium range. Default -3.
	SINRMediumMin int32
	// SINRPoorMin is the lower bound (dB, inclusive) of the poor range. Default -8.
	// Below it a value is outside all ranges (see RSRPPoorMin).
	SINRPoorMin int32

	// Budget is the number of radio units a cell lends out at once, across all
	// tasks. Default 50.
	Budget uint32
	// CostGood is what a device with good coverage costs. Default 1 (50 at once).
	CostGood uint32
	// CostMedium is what a device with medium coverage costs. Default 5 (10 at once).
	CostMedium uint32
	// CostPoor is what a device with poor or out-of-range coverage costs.
	// Default 50 (it upgrades alone).
	CostPoor uint32
	// CostCellOnly is what a device costs when only its cell ID is known.
	// Default 5 (10 at once).
	CostCellOnly uint32
}

// DefaultConfig returns the configuration of spec 1.3 and project decision 1.
func DefaultConfig() Config {
	return Config{
		RSRPMax:       -44,
		RSRPGoodMin:   -105,
		RSRPMediumMin: -115,
		RSRPPoorMin:   -125,
		SINRMax:       30,
		SINRGoodMin:   7,
		SINRMediumMin: -3,
		SINRPoorMin:   -8,
		Budget:        50,
		CostGood:      1,
		CostMedium:    5,
		CostPoor:      50,
		CostCellOnly:  5,
	}
}

// Validate reports whether c is usable: per metric the lower bounds are
// strictly increasing (poor < medium < good) and the good lower bound is at
// most the ceiling; the budget is positive; every cost is between 1 and the
// budget. The error wraps ErrInvalidConfig.
func (c Config) Validate() error {
	if !(c.RSRPPoorMin < c.RSRPMediumMin && c.RSRPMediumMin < c.RSRPGoodMin && c.RSRPGoodMin <= c.RSRPMax) {
		return fmt.Errorf("%w: RSRP boundaries must satisfy poor < medium < good <= max, got %d < %d < %d <= %d",
			ErrInvalidConfig, c.RSRPPoorMin, c.RSRPMediumMin, c.RSRPGoodMin, c.RSRPMax)
	}
	if !(c.SINRPoorMin < c.SINRMediumMin && c.SINRMediumMin < c.SINRGoodMin && c.SINRGoodMin <= c.SINRMax) {
		return fmt.Errorf("%w: SINR boundaries must satisfy poor < medium < good <= max, got %d < %d < %d <= %d",
			ErrInvalidConfig, c.SINRPoorMin, c.SINRMediumMin, c.SINRGoodMin, c.SINRMax)
	}
	if c.Budget == 0 {
		return fmt.Errorf("%w: Budget must be > 0", ErrInvalidConfig)
	}
	for _, f := range []struct {
		name string
		v    uint32
	}{{"CostGood", c.CostGood}, {"CostMedium", c.CostMedium}, {"CostPoor", c.CostPoor}, {"CostCellOnly", c.CostCellOnly}} {
		if f.v < 1 || f.v > c.Budget {
			return fmt.Errorf("%w: %s must be in 1..Budget (%d), got %d", ErrInvalidConfig, f.name, c.Budget, f.v)
		}
	}
	return nil
}

// grade places one metric into a coverage level. outside reports a value
// outside all ranges (above the ceiling or below the poor range), which is
// graded POOR.
func grade(x, poorMin, mediumMin, goodMin, maxV int32) (level messages.CoverageLevel, outside bool) {
	switch {
	case x > maxV, x < poorMin:
		return messages.CoverageLevel_COVERAGE_LEVEL_POOR, true
	case x >= goodMin:
		return messages.CoverageLevel_COVERAGE_LEVEL_GOOD, false
	case x >= mediumMin:
		return messages.CoverageLevel_COVERAGE_LEVEL_MEDIUM, false
	default:
		return messages.CoverageLevel_COVERAGE_LEVEL_POOR, false
	}
}

// Classify returns a device's effective coverage level in its cell (spec 1.1,
// 3.2 and project decision 7), in this order:
//
//   - a value that is present (non-nil) but outside all ranges, for example a
//     positive "dBm" RSRP, makes the device COVERAGE_LEVEL_POOR, whatever the
//     other value and even when it is missing or cellOnly is set;
//   - otherwise, when cellOnly is set (the radio query failed) or either
//     value is missing, only the cell ID is known: COVERAGE_LEVEL_CELL_ONLY;
//   - otherwise the weaker of the RSRP (dBm) and SINR (dB) levels.
func Classify(cfg Config, rsrp, sinr *int32, cellOnly bool) messages.CoverageLevel {
	known := !cellOnly
	level := messages.CoverageLevel_COVERAGE_LEVEL_GOOD
	for _, m := range []struct {
		v                                 *int32
		poorMin, mediumMin, goodMin, maxV int32
	}{
		{rsrp, cfg.RSRPPoorMin, cfg.RSRPMediumMin, cfg.RSRPGoodMin, cfg.RSRPMax},
		{sinr, cfg.SINRPoorMin, cfg.SINRMediumMin, cfg.SINRGoodMin, cfg.SINRMax},
	} {
		if m.v == nil {
			known = false
			continue
		}
		l, outside := grade(*m.v, m.poorMin, m.mediumMin, m.goodMin, m.maxV)
		if outside {
			return messages.CoverageLevel_COVERAGE_LEVEL_POOR
		}
		// GOOD < MEDIUM < POOR in the enum: the weaker level is the larger value.
		level = max(level, l)
	}
	if !known {
		return messages.CoverageLevel_COVERAGE_LEVEL_CELL_ONLY
	}
	return level
}

// Cost returns the units a device of the given level costs, at most
// cfg.Budget. An unspecified or unknown level costs as much as a poor one.
func Cost(cfg Config, level messages.CoverageLevel) uint32 {
	var c uint32
	switch level {
	case messages.CoverageLevel_COVERAGE_LEVEL_GOOD:
		c = cfg.CostGood
	case messages.CoverageLevel_COVERAGE_LEVEL_MEDIUM:
		c = cfg.CostMedium
	case messages.CoverageLevel_COVERAGE_LEVEL_CELL_ONLY:
		c = cfg.CostCellOnly
	default:
		c = cfg.CostPoor
	}
	return min(c, cfg.Budget)
}
