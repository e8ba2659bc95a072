package lint

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// wallClockFix says, for each banned function of package time, what to use
// instead in non-test code.
var wallClockFix = map[string]string{
	"Now":       "take a clock.Clock (internal/clock) and call its Now, or use the time carried in the input",
	"Since":     "take a clock.Clock (internal/clock) and call its Since",
	"Until":     "take a clock.Clock (internal/clock) and use t.Sub(c.Now())",
	"Sleep":     "do not block on time: arm a timer with a clock.Clock (internal/clock) and wait on it",
	"After":     "use a clock.Clock's NewTimer(d).C() (internal/clock), and Stop the timer when done",
	"AfterFunc": "use a clock.Clock's AfterFunc (internal/clock)",
	"NewTimer":  "use a clock.Clock's NewTimer (internal/clock)",
	"Tick":      "use a clock.Clock timer (internal/clock) that re-arms itself with Reset",
	"NewTicker": "use a clock.Clock timer (internal/clock) that re-arms itself with Reset",
}

// testWallClockFix overrides wallClockFix in _test.go files.
var testWallClockFix = map[string]string{
	"Now":   "use a fixed time (time.Date(...)) or a clocktest.Clock's Now (internal/clock/clocktest)",
	"Sleep": "tests must not sleep: drive time with clocktest.Clock.Advance, or wait on a channel the code under test closes, or use testing/synctest",
	"After": "tests must not wait on real time: drive time with clocktest.Clock.Advance, or wait on a channel (the go test -timeout catches hangs), or use testing/synctest",
	"Tick":  "tests must not wait on real time: drive time with clocktest.Clock.Advance, or use testing/synctest",
}

// bannedTimeFuncs returns the functions of package time that the file at
// the slash-separated, root-relative path rel must not use.
func bannedTimeFuncs(rel string) map[string]bool {
	inClock, inCmd := under(rel, "internal/clock"), under(rel, "cmd")
	isTest := strings.HasSuffix(rel, "_test.go")
	banned := map[string]bool{}
	if !inClock && !inCmd {
		for name := range wallClockFix {
			banned[name] = true
		}
	}
	if isTest {
		banned["Sleep"], banned["After"], banned["Tick"] = true, true, true
		if !inClock {
			banned["Now"] = true
		}
	}
	return banned
}

// violation is one rule breach at a position in a file.
type violation struct {
	file string // slash-separated, relative to the root walked
	line int
	what string // e.g. "time.Sleep"
	fix  string
}

func (v violation) String() string {
	return fmt.Sprintf("%s:%d: %s: %s", v.file, v.line, v.what, v.fix)
}

// checkWallClock reports every use (call or function value) of a banned
// function of package time in the .go files under root, resolving the name
// under which each file imports "time".
func checkWallClock(root string) ([]violation, error) {
	files, err := goFiles(root)
	if err != nil {
		return nil, err
	}
	var out []violation
	for _, rel := range files {
		banned := bannedTimeFuncs(rel)
		if len(banned) == 0 {
			continue
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, filepath.Join(root, filepath.FromSlash(rel)), nil, 0)
		if err != nil {
			return nil, err
		}
		fix := func(name string) string {
			if strings.HasSuffix(rel, "_test.go") && testWallClockFix[name] != "" {
				return testWallClockFix[name]
			}
			return wallClockFix[name]
		}
		names := map[string]bool{} // local names of package time in f
		for _, imp := range f.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); p != "time" {
				continue
			}
			switch {
			case imp.Name == nil:
				names["time"] = true
			case imp.Name.Name == ".":
				out = append(out, violation{rel, fset.Position(imp.Pos()).Line, `import . "time"`,
					`import "time" by name so that wall-clock calls stay visible`})
			case imp.Name.Name != "_":
				names[imp.Name.Name] = true
			}
		}
		if len(names) == 0 {
			continue
		}
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			id, ok := sel.X.(*ast.Ident)
			// id.Obj is non-nil when id is a local declaration (say a
			// parameter named time) that shadows the import.
			if !ok || !names[id.Name] || id.Obj != nil || !banned[sel.Sel.Name] {
				return true
			}
			out = append(out, violation{rel, fset.Position(sel.Pos()).Line, "time." + sel.Sel.Name, fix(sel.Sel.Name)})
			return true
		})
	}
	return out, nil
}

// TestWallClock enforces ARCHITECTURE.md "Time" on the module.
func TestWallClock(t *testing.T) {
	vs, err := checkWallClock(moduleRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		t.Errorf("%v (only internal/clock and cmd/ may touch the wall clock, and no test may sleep)", v)
	}
}

func TestWallClockFixture(t *testing.T) {
	vs, err := checkWallClock(filepath.Join("testdata", "wallclock"))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		t.Log(v) // the full messages, for go test -v
	}
	var got []string
	for _, v := range vs {
		got = append(got, fmt.Sprintf("%s:%d %s", v.file, v.line, v.what))
	}
	want := []string{
		"cmd/tool/main_test.go:9 time.Now",
		"cmd/tool/main_test.go:10 time.Sleep",
		"internal/clock/clock_test.go:10 time.Sleep",
		"internal/clock/clock_test.go:11 time.After",
		"pkg/bad.go:6 time.Now",
		"pkg/bad.go:9 time.Sleep",
		"pkg/bad.go:10 time.NewTicker",
		"pkg/bad.go:11 time.Until",
		"pkg/bad_test.go:9 time.Now",
		"pkg/bad_test.go:10 time.Tick",
		"pkg/dot.go:3 import . \"time\"",
		"pkg/renamed.go:9 time.AfterFunc",
		"pkg/renamed.go:10 time.Since",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("checkWallClock(testdata/wallclock) =\n\t%s\nwant\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
	for _, v := range vs {
		if v.fix == "" {
			t.Errorf("%v has no fix", v)
		}
	}
}
