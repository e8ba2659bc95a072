package lint

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// checkPackageDocs reports each package directory under root whose non-test,
// non-generated .go files do not hold exactly one package doc comment
// starting "Package <name> ". For a command (package main) the doc starts
// with the command's name instead: "Command <dir> " or "<Dir> " as in
// "Gofmt formats Go programs." Files excluded from every build by the
// "ignore" build tag do not count.
func checkPackageDocs(root string) ([]string, error) {
	files, err := goFiles(root)
	if err != nil {
		return nil, err
	}
	type doc struct {
		file string
		text string
	}
	type pkg struct {
		name  string
		files int
		docs  []doc
	}
	pkgs := map[string]*pkg{}
	for _, rel := range files {
		if strings.HasSuffix(rel, "_test.go") || strings.HasSuffix(rel, ".pb.go") {
			continue
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, filepath.Join(root, filepath.FromSlash(rel)), nil, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			return nil, err
		}
		if ast.IsGenerated(f) || ignored(f) {
			continue
		}
		dir := path.Dir(rel)
		p := pkgs[dir]
		if p == nil {
			p = &pkg{name: f.Name.Name}
			pkgs[dir] = p
		}
		p.files++
		if f.Doc != nil {
			p.docs = append(p.docs, doc{rel, f.Doc.Text()})
		}
	}
	dirs := make([]string, 0, len(pkgs))
	for dir := range pkgs {
		dirs = append(dirs, dir)
	}
	sort.Strings(dirs)

	var out []string
	for _, dir := range dirs {
		p := pkgs[dir]
		prefixes := []string{"Package " + p.name + " "}
		if p.name == "main" {
			base := path.Base(dir)
			if dir == "." {
				base = path.Base(filepath.ToSlash(root))
			}
			r, n := utf8.DecodeRuneInString(base)
			prefixes = []string{"Command " + base + " ", string(unicode.ToUpper(r)) + base[n:] + " "}
		}
		want := fmt.Sprintf("%q", prefixes[0])
		if len(prefixes) > 1 {
			want += fmt.Sprintf(" or %q", prefixes[1])
		}
		switch len(p.docs) {
		case 0:
			out = append(out, fmt.Sprintf("%s: package %s has no package doc comment: add a doc.go holding a comment that starts %s directly above its package clause",
				dir, p.name, want))
		case 1:
			d := p.docs[0]
			ok := false
			for _, prefix := range prefixes {
				ok = ok || strings.HasPrefix(d.text, prefix)
			}
			if !ok {
				first, _, _ := strings.Cut(d.text, "\n")
				out = append(out, fmt.Sprintf("%s: the package doc comment starts %q: make it start %s",
					d.file, first, want))
			}
		default:
			var names []string
			for _, d := range p.docs {
				names = append(names, d.file)
			}
			out = append(out, fmt.Sprintf("%s: package %s has %d package doc comments (%s): keep one (in doc.go when long) and separate the others from their package clause with a blank line",
				dir, p.name, len(p.docs), strings.Join(names, ", ")))
		}
	}
	return out, nil
}

// TestPackageDocs checks STYLE.md 6: exactly one package doc per package.
func TestPackageDocs(t *testing.T) {
	vs, err := checkPackageDocs(moduleRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		t.Error(v)
	}
}

func TestPackageDocsFixture(t *testing.T) {
	got, err := checkPackageDocs(filepath.Join("testdata", "pkgdoc"))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range got {
		t.Log(v) // the full messages, for go test -v
	}
	for i, v := range got {
		got[i], _, _ = strings.Cut(v, ": ") // the directory or file at fault
	}
	want := []string{
		"cmd/badtool/main.go", // "Tool is ..." instead of "Badtool ..."
		"none",                // no doc at all
		"two",                 // a doc in a.go and in b.go
		"wrong/wrong.go",      // "This package ..."
		"wrongname/doc.go",    // "Package other ..."
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("checkPackageDocs(testdata/pkgdoc) found\n\t%s\nwant\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}
