// Package goldentest compares test output with a golden file under testdata/
// and rewrites the file instead when the test binary runs with -rewrite (the
// flag github.com/cockroachdb/datadriven registers), so golden tables and
// datadriven transcripts regenerate with one command:
//
//	go test ./actors/... -rewrite
//
// It is for tests only; it is safe for concurrent use by parallel tests that
// check different files.
package goldentest

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	// datadriven defines the -rewrite flag; importing it here makes the flag
	// exist in every test binary that uses goldentest.
	_ "github.com/cockroachdb/datadriven"
	"github.com/pmezard/go-difflib/difflib"
)

// Rewriting reports whether the test binary was started with -rewrite.
func Rewriting() bool {
	f := flag.Lookup("rewrite")
	return f != nil && f.Value.String() == "true"
}

// Check compares got with the file at path. Under -rewrite it writes got to
// path (creating its directory) and passes; otherwise a difference fails the
// test with a unified diff and the command that regenerates the file.
func Check(t testing.TB, path, got string) {
	t.Helper()
	if Rewriting() {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("golden file: %v (run the test with -rewrite to create it)", err)
	}
	if got == string(want) {
		return
	}
	diff, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: difflib.SplitLines(string(want)), B: difflib.SplitLines(got),
		FromFile: path, ToFile: "got", Context: 2,
	})
	if err != nil {
		t.Fatalf("golden file %s differs, and the diff failed: %v", path, err)
	}
	t.Errorf("output differs from %s; if the change is intended, rerun with -rewrite and review the diff:\n%s", path, diff)
}
