// Command otafleet is the over-the-air upgrade engine: `otafleet serve` runs
// everything on one machine with embedded defaults and a data folder. See the
// README for the tour and ../shared/CONTRACT.md for the flags scripts rely on.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// exitError carries a process exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// run executes one command line and returns the process exit code: 0 on
// success, 2 for usage errors (see usageErrors), 1 for anything else.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := &cobra.Command{
		Use:           "otafleet",
		Short:         "Over-the-air firmware and software upgrades for fleets of IoT devices",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetArgs(args)
	root.AddCommand(serveCommand(stdout, stderr))
	root.AddCommand(clientCommands(stdout, stderr)...)
	root.AddCommand(simCommand(stdout, stderr), benchCommand(stdout, stderr), storeCommand(stdout, stderr))
	usageErrors(root)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "otafleet:", err)
	if errors.Is(err, syscall.ECONNREFUSED) {
		fmt.Fprintln(stderr, "otafleet: nothing answers there: is otafleet serve running? (--api, $"+envAPI+" or --data-dir say where)")
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}
