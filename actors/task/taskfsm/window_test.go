package taskfsm

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/otafleet/otafleet/messages"
)

func mustZone(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func win(start, end string, tz string) *messages.Window {
	parse := func(v string) uint32 {
		x, err := time.Parse("15:04", v)
		if err != nil {
			panic(err)
		}
		return uint32(x.Hour()*60 + x.Minute())
	}
	return &messages.Window{StartMinute: parse(start), EndMinute: parse(end), TimeZone: tz}
}

func TestNextOpen(t *testing.T) {
	utc := func(v string) time.Time {
		x, err := time.Parse(time.RFC3339, v)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	berlin := mustZone(t, "Europe/Berlin")
	shanghai := mustZone(t, "Asia/Shanghai")
	tests := []struct {
		name string
		w    *messages.Window
		loc  *time.Location
		at   string
		want string
	}{
		{"no window", nil, nil, "2026-03-01T12:34:56Z", "2026-03-01T12:34:56Z"},
		{"nil zone is UTC, open", win("01:00", "05:00", ""), nil, "2026-03-01T03:00:00Z", "2026-03-01T03:00:00Z"},
		{"before opening", win("01:00", "05:00", ""), time.UTC, "2026-03-01T00:59:59Z", "2026-03-01T01:00:00Z"},
		{"end is exclusive", win("01:00", "05:00", ""), time.UTC, "2026-03-01T05:00:00Z", "2026-03-02T01:00:00Z"},
		{"start is inclusive", win("01:00", "05:00", ""), time.UTC, "2026-03-01T01:00:00Z", "2026-03-01T01:00:00Z"},
		{"Shanghai closed at 08:00", win("01:00", "05:00", ""), shanghai, "2026-03-01T00:00:00Z", "2026-03-01T17:00:00Z"},
		{"midnight: before start", win("22:00", "02:00", ""), time.UTC, "2026-03-01T12:00:00Z", "2026-03-01T22:00:00Z"},
		{"midnight: after midnight", win("22:00", "02:00", ""), time.UTC, "2026-03-02T01:59:59Z", "2026-03-02T01:59:59Z"},
		{"midnight: before midnight", win("22:00", "02:00", ""), time.UTC, "2026-03-01T23:00:00Z", "2026-03-01T23:00:00Z"},
		{"midnight: just closed", win("22:00", "02:00", ""), time.UTC, "2026-03-02T02:00:00Z", "2026-03-02T22:00:00Z"},
		{"midnight in Berlin", win("23:30", "00:30", ""), berlin, "2026-03-02T12:00:00Z", "2026-03-02T22:30:00Z"},
		// Spring forward: 2026-03-29 02:00 CET -> 03:00 CEST (01:00 UTC).
		{"spring: opening in the gap", win("02:30", "04:00", ""), berlin, "2026-03-28T12:00:00Z", "2026-03-29T01:00:00Z"},
		{"spring: window inside the gap", win("02:00", "02:30", ""), berlin, "2026-03-28T12:00:00Z", "2026-03-30T00:00:00Z"},
		{"spring: after the gap", win("03:30", "04:00", ""), berlin, "2026-03-28T12:00:00Z", "2026-03-29T01:30:00Z"},
		{"spring: day before", win("04:00", "05:00", ""), berlin, "2026-03-28T12:00:00Z", "2026-03-29T02:00:00Z"},
		{"spring: day after", win("04:00", "05:00", ""), berlin, "2026-03-29T12:00:00Z", "2026-03-30T02:00:00Z"},
		// Fall back: 2026-10-25 03:00 CEST -> 02:00 CET (01:00 UTC).
		{"fall: first 02:30", win("02:30", "03:00", ""), berlin, "2026-10-24T12:00:00Z", "2026-10-25T00:30:00Z"},
		{"fall: second 02:30", win("02:30", "03:00", ""), berlin, "2026-10-25T01:10:00Z", "2026-10-25T01:30:00Z"},
		{"fall: repeated hour re-opens at the jump", win("02:00", "02:30", ""), berlin, "2026-10-25T00:45:00Z", "2026-10-25T01:00:00Z"},
		{"fall: day after", win("04:00", "05:00", ""), berlin, "2026-10-25T12:00:00Z", "2026-10-26T03:00:00Z"},
		{"degenerate start == end", &messages.Window{StartMinute: 60, EndMinute: 60}, time.UTC, "2026-03-01T12:00:00Z", "2026-03-01T12:00:00Z"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := NextOpen(tc.w, tc.loc, utc(tc.at))
			if want := utc(tc.want); !got.Equal(want) {
				t.Errorf("NextOpen(%s) = %s, want %s", tc.at, got.UTC().Format(time.RFC3339), tc.want)
			}
		})
	}
}

// TestNextOpenBruteForce checks NextOpen against a minute-by-minute scan in
// zones with DST, half-hour offsets and half-hour DST shifts.
func TestNextOpenBruteForce(t *testing.T) {
	zones := []string{"UTC", "Europe/Berlin", "Asia/Shanghai", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "America/Santiago"}
	r := rand.New(rand.NewPCG(7, 11))
	// Instants around the 2026 DST changes of these zones, and random ones.
	bases := []time.Time{
		time.Date(2026, 3, 29, 0, 0, 0, 0, time.UTC), time.Date(2026, 10, 25, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 3, 8, 6, 0, 0, 0, time.UTC), time.Date(2026, 11, 1, 5, 0, 0, 0, time.UTC),
		time.Date(2026, 4, 4, 14, 0, 0, 0, time.UTC), time.Date(2026, 10, 3, 15, 0, 0, 0, time.UTC),
		time.Date(2026, 4, 5, 2, 0, 0, 0, time.UTC), time.Date(2026, 9, 6, 3, 0, 0, 0, time.UTC),
	}
	for range 40 {
		bases = append(bases, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(r.Int64N(int64(365*24*time.Hour)))))
	}
	for _, zone := range zones {
		loc := mustZone(t, zone)
		for _, base := range bases {
			for range 6 {
				s := uint32(r.IntN(1440))
				e := uint32(r.IntN(1440))
				if s == e {
					continue
				}
				w := &messages.Window{StartMinute: s, EndMinute: e}
				at := base.Add(time.Duration(r.Int64N(int64(36*time.Hour))) - 18*time.Hour)
				got := NextOpen(w, loc, at)
				if !isOpen(w, loc, got) {
					t.Fatalf("%s %v at %s: NextOpen %s is not open", zone, w, at, got)
				}
				if got.Before(at) {
					t.Fatalf("%s: NextOpen %s before %s", zone, got, at)
				}
				if got.Sub(at) > 49*time.Hour {
					t.Fatalf("%s %v: NextOpen %s too far after %s", zone, w, got, at)
				}
				// No open instant in [at, got): check at and every minute boundary.
				if got.After(at) && isOpen(w, loc, at) {
					t.Fatalf("%s: open at %s but NextOpen %s", zone, at, got)
				}
				for m := at.Truncate(time.Minute).Add(time.Minute); m.Before(got); m = m.Add(time.Minute) {
					if isOpen(w, loc, m) {
						t.Fatalf("%s %v from %s: open at %s before NextOpen %s", zone, w, at, m, got)
					}
				}
			}
		}
	}
}
