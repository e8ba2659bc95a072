package lint

import (
	"go/ast"
	"go/build/constraint"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// moduleRoot returns the directory holding the go.mod of the module under
// test, found by walking up from the test's working directory.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod found above the working directory")
		}
		dir = parent
	}
}

// goFiles returns the .go files under root, as slash-separated paths
// relative to root, in lexical order. Like the go command, it skips testdata,
// vendor and directories whose names start with "." or "_", and nested
// modules (directories below root with their own go.mod).
func goFiles(root string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p == root {
				return nil
			}
			name := d.Name()
			if name == "testdata" || name == "vendor" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(p, ".go") {
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	return files, err
}

// under reports whether the slash-separated path rel is dir or inside it.
func under(rel, dir string) bool {
	return rel == dir || strings.HasPrefix(rel, dir+"/")
}

// ignored reports whether f carries a build constraint that keeps it out of
// every ordinary build (the "ignore" tag, as go:generate helpers use).
func ignored(f *ast.File) bool {
	for _, g := range f.Comments {
		if g.Pos() > f.Package {
			break
		}
		for _, c := range g.List {
			if !constraint.IsGoBuild(c.Text) {
				continue
			}
			expr, err := constraint.Parse(c.Text)
			if err != nil {
				return false
			}
			return !expr.Eval(func(tag string) bool { return tag != "ignore" })
		}
	}
	return false
}

func TestUnder(t *testing.T) {
	for _, c := range []struct {
		rel, dir string
		want     bool
	}{
		{"internal/clock", "internal/clock", true},
		{"internal/clock/clocktest/x.go", "internal/clock", true},
		{"internal/clockwork/x.go", "internal/clock", false},
		{"cmd/otafleet/main.go", "cmd", true},
		{"cmdline/x.go", "cmd", false},
	} {
		if got := under(c.rel, c.dir); got != c.want {
			t.Errorf("under(%q, %q) = %v, want %v", c.rel, c.dir, got, c.want)
		}
	}
}
