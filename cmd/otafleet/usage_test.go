package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestUsageErrorsExitTwo: every usage error exits 2 (shared/CONTRACT.md)
// with a message in the user's words, before any server is asked; an
// unknown command names the ones that come close.
func TestUsageErrorsExitTwo(t *testing.T) {
	t.Setenv(envToken, "")
	t.Setenv(envAPI, "")
	// No server listens here: a command that got past its usage checks
	// would fail to connect and exit 1.
	client := []string{"--api", "127.0.0.1:1", "--token", "t", "--timeout", "1s"}
	task := []string{"task", "create", "--name", "x", "--type", "firmware", "--package", "p", "--device", "d"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"task", "crate"}, `unknown command "crate" for "otafleet task"; did you mean "create"?`},
		{[]string{"tsk", "list"}, `unknown command "tsk" for "otafleet"; did you mean "task"?`},
		{[]string{"product", "lst"}, `did you mean "get" or "list"?`},
		{[]string{"task"}, "otafleet task needs a command"},
		{append([]string{"task", "create", "--name", "x"}, client...), `required flag(s) "package", "type" not set`},
		{append([]string{"product", "create", "--name", "x"}, client...), `required flag(s) "protocol" not set`},
		{append([]string{"task", "get"}, client...), "accepts 1 arg(s), received 0\nusage: otafleet task get TASK_ID"},
		{append([]string{"task", "list", "--progress", "bogus"}, client...), `--progress must be auto, always or never, not "bogus"`},
		{append(append(task, "--schedule", "-5m"), client...), "is in the past"},
		{append(append(task, "--schedule", "2020-01-01T00:00:00Z"), client...), `--schedule "2020-01-01T00:00:00Z" is in the past`},
		{[]string{"serve", "--simulate", "x"}, `--simulate "x": want a whole number`},
		{[]string{"serve", "--timeout-online", "5"}, `--timeout-online "5": want a duration such as 90s, 5m or 2h`},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), tc.args, &out, &errb)
		if code != exitUsage || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, errb.String(), exitUsage, tc.want)
		}
		if strings.Contains(errb.String(), "strconv.") || strings.Contains(errb.String(), "time: ") {
			t.Errorf("%v: a Go error in %q", tc.args, errb.String())
		}
	}
	// The same commands well formed get past their usage checks: they fail
	// to reach the server, a runtime error.
	for _, args := range [][]string{
		append([]string{"task", "list", "--progress", "never"}, client...),
		append(append(task, "--schedule", "90m"), client...),
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != 1 || !strings.Contains(errb.String(), "is otafleet serve running?") {
			t.Errorf("%v: exit %d, want 1 (no server) and a hint: %s", args, code, errb.String())
		}
	}
}
