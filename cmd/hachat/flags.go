package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strings"
)

// parseArgs parses args into fs, whose name is the command line a user
// typed ("hachat demo"). --help prints header and every flag (spelled
// --flag, as the docs do) to errw and returns flag.ErrHelp. A bad flag or a
// stray argument prints the error and a one-line hint to errw, not the whole
// help, and returns errUsage.
func parseArgs(fs *flag.FlagSet, header string, args []string, errw io.Writer) error {
	fs.SetOutput(io.Discard) // the flag package would print the whole usage on every error
	fs.Usage = func() {}
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(errw, header)
		printFlags(errw, fs)
		return err
	case err != nil:
		usageHint(errw, fs.Name(), singleDash.ReplaceAllString(err.Error(), "$1--$2"))
		return errUsage
	case fs.NArg() > 0:
		usageHint(errw, fs.Name(), fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
		return errUsage
	}
	return nil
}

// singleDash finds a flag the flag package's errors spell with one dash
// ("flag provided but not defined: -frobnicate"), to spell it with two.
var singleDash = regexp.MustCompile(`(^|[ :])-([a-zA-Z])`)

// usageHint prints what was wrong with the command line, then where to
// find the flags.
func usageHint(w io.Writer, name, problem string) {
	fmt.Fprintf(w, "%s: %s\nrun '%s --help' for the flags\n", name, problem, name)
}

// printFlags lists fs's flags as flag.PrintDefaults does, but spelled with
// two dashes.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if arg != "" {
			line += " " + arg
		}
		line += "\n    \t" + strings.ReplaceAll(usage, "\n", "\n    \t")
		if !isZeroDefault(f) {
			if isString(f) {
				line += fmt.Sprintf(" (default %q)", f.DefValue)
			} else {
				line += fmt.Sprintf(" (default %v)", f.DefValue)
			}
		}
		fmt.Fprintln(w, line)
	})
}

// isString reports whether f holds a string, whose default the help quotes.
func isString(f *flag.Flag) bool {
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return false
	}
	_, ok = g.Get().(string)
	return ok
}

// isZeroDefault reports whether f's default is its type's zero value, which
// the help leaves out (as flag.PrintDefaults does).
func isZeroDefault(f *flag.Flag) (zero bool) {
	defer func() {
		if recover() != nil { // a Value whose String panics on its zero value
			zero = f.DefValue == ""
		}
	}()
	t := reflect.TypeOf(f.Value)
	var z reflect.Value
	if t.Kind() == reflect.Pointer {
		z = reflect.New(t.Elem())
	} else {
		z = reflect.Zero(t)
	}
	v, ok := z.Interface().(flag.Value)
	if !ok {
		return f.DefValue == ""
	}
	return f.DefValue == v.String()
}
