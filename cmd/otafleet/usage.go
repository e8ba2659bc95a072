package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// exitUsage is the exit code of a usage error (shared/CONTRACT.md): an
// unknown or missing command, a missing or unknown flag, a bad flag value,
// the wrong number of arguments. Anything that goes wrong later exits 1.
const exitUsage = 2

// usageError marks err as a usage error (exit 2).
func usageError(err error) error { return &exitError{code: exitUsage, err: err} }

// usageOf is a usage error of cmd, followed by how cmd is used.
func usageOf(cmd *cobra.Command, err error) error {
	return usageError(fmt.Errorf("%w\nusage: %s", err, cmd.UseLine()))
}

// usageErrors makes every usage error cobra finds in the tree under root
// exit 2: argument counts, required flags, flag values (in user words, see
// flagError), and unknown or missing commands, which name the commands that
// come close ("did you mean").
func usageErrors(root *cobra.Command) {
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError(flagError(err)) })
	// cobra checks required flags after the pre-run hooks, with no way to
	// mark the error; checking them first here does (no command has a
	// pre-run hook of its own).
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if err := cmd.ValidateRequiredFlags(); err != nil {
			return usageOf(cmd, err)
		}
		if err := cmd.ValidateFlagGroups(); err != nil {
			return usageOf(cmd, err)
		}
		return nil
	}
	var walk func(cmd *cobra.Command)
	walk = func(cmd *cobra.Command) {
		if cmd.HasSubCommands() {
			// A command that only groups others: its argument must name one.
			cmd.Args = cobra.ArbitraryArgs
			cmd.RunE = func(cmd *cobra.Command, args []string) error {
				if len(args) == 0 {
					cmd.SetOut(cmd.ErrOrStderr())
					_ = cmd.Usage()
					return usageError(fmt.Errorf("%s needs a command (see above)", cmd.CommandPath()))
				}
				return usageError(unknownCommand(cmd, args[0]))
			}
		} else if check := cmd.Args; check != nil {
			cmd.Args = func(cmd *cobra.Command, args []string) error {
				if err := check(cmd, args); err != nil {
					return usageOf(cmd, err)
				}
				return nil
			}
		}
		for _, sub := range cmd.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// unknownCommand says that name is none of cmd's commands, and which come
// close.
func unknownCommand(cmd *cobra.Command, name string) error {
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	msg := fmt.Sprintf("unknown command %q for %q", name, cmd.CommandPath())
	if close := cmd.SuggestionsFor(name); len(close) > 0 {
		msg += fmt.Sprintf("; did you mean %s?", strings.Join(quoteAll(close), " or "))
	}
	return errors.New(msg + "\nrun '" + cmd.CommandPath() + " --help' for its commands")
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}

// flagError says what a flag wants when its value is refused, instead of
// the parser's Go error (strconv.ParseInt: parsing "x": invalid syntax).
func flagError(err error) error {
	var iv *pflag.InvalidValueError
	if !errors.As(err, &iv) {
		return err
	}
	f := iv.GetFlag()
	if want, ok := wants[f.Value.Type()]; ok {
		return fmt.Errorf("--%s %q: want %s", f.Name, iv.GetValue(), want)
	}
	return fmt.Errorf("--%s %w", f.Name, errors.Unwrap(iv)) // our own flag types say what they want
}

// wants describes, by the flag parser's type names, the values a flag or a
// config-file key of that type takes.
var wants = map[string]string{
	"bool":     "true or false",
	"int":      "a whole number",
	"int32":    "a whole number",
	"int64":    "a whole number",
	"uint32":   "a whole number, 0 or more",
	"float64":  "a number",
	"duration": "a duration such as 90s, 5m or 2h",
	"string":   "a text (in quotes in TOML)",
}
