package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestTaskRetryHelp: the help of `task retry` promises only what RetryTask
// does (spec 5.4): it re-runs devices of a running or finished task, never a
// stopped task, and a device waiting for its policy retry gets no extra
// attempt.
func TestTaskRetryHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"task", "retry", "--help"}, &out, &errb); code != 0 {
		t.Fatalf("task retry --help: exit %d: %s", code, errb.String())
	}
	help := strings.Join(strings.Fields(out.String()), " ")
	for _, want := range []string{
		"A stopped task cannot be retried",
		"PROCESSING, FAIL or PARTIAL_SUCCESS",
		"A device waiting for its policy retry runs that retry now, without an extra attempt",
	} {
		if !strings.Contains(help, want) {
			t.Errorf("task retry --help does not say %q:\n%s", want, out.String())
		}
	}
	for _, promise := range []string{"failed and stopped devices", "every failed or stopped one"} {
		if strings.Contains(help, promise) {
			t.Errorf("task retry --help still says %q:\n%s", promise, out.String())
		}
	}
}
