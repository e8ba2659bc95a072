package goldentest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// recorder captures failures instead of failing the outer test.
type recorder struct {
	testing.TB
	failed bool
	msg    string
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.failed = true
	r.msg = format
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = true
	r.msg = format
}

func TestCheck(t *testing.T) {
	if Rewriting() {
		t.Skip("meaningless under -rewrite")
	}
	path := filepath.Join(t.TempDir(), "golden.txt")
	r := &recorder{TB: t}
	Check(r, path, "a\n")
	if !r.failed || !strings.Contains(r.msg, "-rewrite") {
		t.Fatalf("a missing golden file must fail and name -rewrite, got %q", r.msg)
	}
	if err := os.WriteFile(path, []byte("a\nb\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = &recorder{TB: t}
	Check(r, path, "a\nb\n")
	if r.failed {
		t.Fatal("equal output failed")
	}
	r = &recorder{TB: t}
	Check(r, path, "a\nc\n")
	if !r.failed {
		t.Fatal("different output passed")
	}
}
