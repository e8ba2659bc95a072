package lint

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
)

// importRule limits what the packages matching pkgs may depend on, directly
// or transitively, in non-test code. Patterns are module-relative import
// paths: a trailing "/..." matches the path and everything below it, anything
// else is a path.Match pattern. Allowed patterns starting with "$mod/" are
// relative to the module; the standard library is always allowed.
type importRule struct {
	pkgs    string
	allow   []string
	deny    []string // substrings of import paths named in a specific message
	allowed string   // the allowed set, in words
	advice  string   // how to fix a violation
}

var importRules = []importRule{
	{
		pkgs:    "actors/*/*fsm",
		allow:   []string{"$mod/messages", "google.golang.org/protobuf/..."},
		deny:    []string{"cockroachdb/pebble", "go-coap", "mqtt"},
		allowed: "the standard library, $mod/messages and google.golang.org/protobuf/...",
		advice:  "a state machine is pure: move the code that needs it into the actor shell (the parent actors/<kind> package) and hand the fsm what it needs inside its inputs",
	},
	{
		pkgs:    "messages",
		allow:   []string{"google.golang.org/protobuf/..."},
		allowed: "the standard library and google.golang.org/protobuf/...",
		advice:  "messages is the bottom of the import graph: move the code that needs it up into the package that uses messages",
	},
	{
		pkgs:    "transport/pcp",
		allow:   []string{"$mod/messages", "google.golang.org/protobuf/..."},
		deny:    []string{"go-coap", "mqtt", "cockroachdb/pebble"},
		allowed: "the standard library and $mod/messages (PCP's codes and sizes; google.golang.org/protobuf/... with it)",
		advice:  "pcp is a pure codec that the engine's vocabulary names and both ends of PCP use: move the code that needs it into the LwM2M adapter (transport/lwm2m) or the simulator",
	},
	{
		pkgs:    "internal/clock/...",
		allow:   []string{"$mod/internal/clock/..."},
		allowed: "the standard library",
		advice:  "the clock must stay importable by everything: drop the import",
	},
}

// importerRule limits which of the module's packages may import the packages
// matching pkgs in non-test code: only those matching one of importers (tests
// may import them freely). Checking every package's direct imports covers the
// transitive ones too: a package that reaches pkgs through others is let
// through only by an allowed importer on the way. Patterns are as in
// importRule, all module-relative.
type importerRule struct {
	pkgs      string
	importers []string
	allowed   string // the importers, in words
	advice    string // how to fix a violation
}

var importerRules = []importerRule{
	{
		pkgs:      "bench/sim/...",
		importers: []string{"cmd/...", "bench/..."},
		allowed:   "cmd/..., bench/... and tests",
		advice:    "the simulators model devices, they are not part of otafleet: use them from a test (a _test.go file may import them), cmd/ or bench/",
	},
	{
		pkgs:      "transport/*/...",
		importers: []string{"cmd/...", "bench/...", "transport/..."},
		allowed:   "cmd/..., bench/..., transport/... and tests",
		advice:    "the engine (actors), its machines and the API reach devices only through the seam package transport (Downlinks, Uplinks): depend on those interfaces and let cmd/otafleet wire the adapter in",
	},
}

// matchPattern reports whether the import path p matches pattern (see
// importRule). Before a trailing "/...", path.Match wildcards match whole
// elements: "transport/*/..." matches transport/mqtt and
// transport/mqtt/iotda, not transport.
func matchPattern(pattern, p string) bool {
	if dir, ok := strings.CutSuffix(pattern, "/..."); ok {
		for q := p; ; {
			if ok, err := path.Match(dir, q); err == nil && ok {
				return true
			}
			i := strings.LastIndex(q, "/")
			if i < 0 {
				return false
			}
			q = q[:i]
		}
	}
	ok, err := path.Match(pattern, p)
	return err == nil && ok
}

// listedPackage is one line of `go list -deps`.
type listedPackage struct {
	standard bool
	imports  []string
}

// goList runs the go command in dir with extra environment entries and
// returns its standard output.
func goList(dir string, env []string, args ...string) (string, error) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("the import rules need the go command on PATH: %w", err)
	}
	cmd := exec.Command(goCmd, append([]string{"list"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "GOWORK=off"), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go list %s in %s: %v\n%s", strings.Join(args, " "), dir, err, stderr.String())
	}
	return stdout.String(), nil
}

// checkImports applies importRules and importerRules to the packages of the
// module rooted at root. Rules whose packages do not exist yet find nothing
// to check.
func checkImports(root string, env ...string) ([]string, error) {
	out, err := goList(root, env, "-m", "-f", "{{.Path}}")
	if err != nil {
		return nil, err
	}
	mod := strings.TrimSpace(out)
	// -e: a package with errors (say, mid-edit) is still listed with its
	// imports; a missing import is listed as a non-standard package.
	out, err = goList(root, env, "-e", "-deps", "-f", `{{.ImportPath}}{{"\t"}}{{.Standard}}{{"\t"}}{{join .Imports " "}}`, "./...")
	if err != nil {
		return nil, err
	}
	pkgs := map[string]listedPackage{}
	var own []string // the module's packages, module-relative
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 3 {
			return nil, fmt.Errorf("unexpected go list line %q", line)
		}
		pkgs[f[0]] = listedPackage{standard: f[1] == "true", imports: strings.Fields(f[2])}
		if rel, ok := strings.CutPrefix(f[0], mod+"/"); ok {
			own = append(own, rel)
		} else if f[0] == mod {
			own = append(own, ".")
		}
	}
	sort.Strings(own)

	short := func(p string) string { // module-relative when inside the module
		if rel, ok := strings.CutPrefix(p, mod+"/"); ok {
			return rel
		}
		return p
	}
	var violations []string
	for _, rule := range importRules {
		allowed := func(p string) bool {
			if p == "C" || pkgs[p].standard {
				return true
			}
			for _, a := range rule.allow {
				if rel, ok := strings.CutPrefix(a, "$mod/"); ok {
					if r, ok := strings.CutPrefix(p, mod+"/"); ok && matchPattern(rel, r) {
						return true
					}
				} else if matchPattern(a, p) {
					return true
				}
			}
			return false
		}
		denied := func(p string) string {
			for _, d := range rule.deny {
				if strings.Contains(p, d) {
					return d
				}
			}
			return ""
		}
		for _, rel := range own {
			if !matchPattern(rule.pkgs, rel) {
				continue
			}
			// Breadth-first over the non-test import graph, keeping each
			// dependency's parent to print the import chain. Standard
			// packages import only standard packages: no need to descend.
			start := mod + "/" + rel
			parent := map[string]string{start: ""}
			queue := []string{start}
			for len(queue) > 0 {
				p := queue[0]
				queue = queue[1:]
				for _, dep := range pkgs[p].imports {
					if _, seen := parent[dep]; seen {
						continue
					}
					parent[dep] = p
					if allowed(dep) {
						if !pkgs[dep].standard && dep != "C" {
							queue = append(queue, dep)
						}
						continue
					}
					queue = append(queue, dep)
					var chain []string
					for q := dep; q != ""; q = parent[q] {
						chain = append([]string{short(q)}, chain...)
					}
					via := ""
					if len(chain) > 2 {
						via = " (via " + strings.Join(chain, " -> ") + ")"
					}
					allowedSet := strings.ReplaceAll(rule.allowed, "$mod", mod)
					switch d := denied(dep); {
					case d != "":
						violations = append(violations, fmt.Sprintf("%s depends on %s%s: no %s in %s packages; %s",
							rel, dep, via, d, rule.pkgs, rule.advice))
					case p == start || allowed(p): // report only where the graph first leaves the allowed set
						violations = append(violations, fmt.Sprintf("%s depends on %s%s: %s may depend only on %s; %s",
							rel, dep, via, rule.pkgs, allowedSet, rule.advice))
					}
				}
			}
		}
	}
	for _, rule := range importerRules {
		for _, rel := range own {
			if slices.ContainsFunc(rule.importers, func(pat string) bool { return matchPattern(pat, rel) }) {
				continue
			}
			full := mod
			if rel != "." {
				full += "/" + rel
			}
			for _, dep := range pkgs[full].imports {
				if r, ok := strings.CutPrefix(dep, mod+"/"); ok && matchPattern(rule.pkgs, r) {
					violations = append(violations, fmt.Sprintf("%s imports %s: %s may be imported only by %s; %s",
						rel, dep, rule.pkgs, rule.allowed, rule.advice))
				}
			}
		}
	}
	return violations, nil
}

// TestImports enforces the import rules of ARCHITECTURE.md "Layout".
func TestImports(t *testing.T) {
	vs, err := checkImports(moduleRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		t.Error(v)
	}
}

func TestImportsFixture(t *testing.T) {
	// The fixture is its own module with no requirements: nothing to fetch.
	vs, err := checkImports(filepath.Join("testdata", "imports"), "GOPROXY=off", "GOFLAGS=-mod=readonly", "GOTOOLCHAIN=local")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		t.Log(v) // the full messages, for go test -v
	}
	var got []string // "pkg -> dep" for importRules, "pkg imports dep" for importerRules
	for _, v := range vs {
		head, _, _ := strings.Cut(v, ":")
		if pkg, dep, ok := strings.Cut(head, " depends on "); ok {
			head = pkg + " -> " + dep
		}
		got = append(got, head)
	}
	sort.Strings(got)
	want := []string{
		"actors/gadget/gadgetfsm -> github.com/cockroachdb/pebble/v2",
		"actors/widget imports example.com/fixture/transport/mqtt",
		"actors/widget/widgetfsm -> example.com/fixture/actors/widget",
		"actors/widget/widgetfsm -> example.com/fixture/internal/clock (via actors/widget/widgetfsm -> messages -> internal/clock)",
		"actors/widget/widgetfsm -> example.com/fixture/transport/mqtt (via actors/widget/widgetfsm -> actors/widget -> transport/mqtt)",
		"internal/clock/clocktest -> example.com/fixture/transport/mqtt",
		"internal/clock/clocktest imports example.com/fixture/transport/mqtt",
		"messages -> example.com/fixture/internal/clock",
		"rpc imports example.com/fixture/bench/sim/devsim",
		"rpc imports example.com/fixture/transport/mqtt/iotda",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("checkImports(testdata/imports) =\n\t%s\nwant\n\t%s\nfull messages:\n\t%s",
			strings.Join(got, "\n\t"), strings.Join(want, "\n\t"), strings.Join(vs, "\n\t"))
	}
}

func TestMatchPattern(t *testing.T) {
	for _, c := range []struct {
		pattern, p string
		want       bool
	}{
		{"actors/*/*fsm", "actors/device/devicefsm", true},
		{"actors/*/*fsm", "actors/device", false},
		{"actors/*/*fsm", "actors/device/devicefsm/internal", false},
		{"internal/clock/...", "internal/clock", true},
		{"internal/clock/...", "internal/clock/clocktest", true},
		{"internal/clock/...", "internal/clockwork", false},
		{"google.golang.org/protobuf/...", "google.golang.org/protobuf/proto", true},
		{"transport/*/...", "transport", false},
		{"transport/*/...", "transport/mqtt", true},
		{"transport/*/...", "transport/mqtt/iotda", true},
		{"transport/*/...", "transporttest/mqtt", false},
		{"bench/sim/...", "bench/sim/memtransport", true},
		{"bench/sim/...", "bench", false},
		{"bench/sim/...", "bench/simulate", false},
	} {
		if got := matchPattern(c.pattern, c.p); got != c.want {
			t.Errorf("matchPattern(%q, %q) = %v, want %v", c.pattern, c.p, got, c.want)
		}
	}
}
