package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"gopkg.in/yaml.v3"
)

// errUsage reports bad flags; the flag package has already said why.
var errUsage = errors.New("usage")

// parseFlags fills file from its defaults (already set by the caller), then
// from the YAML file named by --config, then from the flags that register
// binds. Flags win over the file, the file over the defaults.
func parseFlags(name, summary string, args []string, errw io.Writer, file any, register func(fs *flag.FlagSet)) error {
	if path := configPath(args); path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read config: %w", err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(b)))
		dec.KnownFields(true)
		if err := dec.Decode(file); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("parse config %s: %w", path, err)
		}
	}
	fs := flag.NewFlagSet("hachat "+name, flag.ContinueOnError)
	fs.SetOutput(errw)
	fs.String("config", "", "YAML file with these options (keys as the flag names); flags override it")
	register(fs)
	fs.Usage = func() {
		fmt.Fprintf(errw, "Usage: hachat %s [flags]\n\n%s\n\nFlags:\n", name, summary)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(errw, "hachat %s: unexpected argument %q\n", name, fs.Arg(0))
		return errUsage
	}
	return nil
}

// configPath finds --config in args before the flags are parsed.
func configPath(args []string) string {
	for i, a := range args {
		a = strings.TrimLeft(a, "-")
		if a == "config" && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, "config="); ok {
			return v
		}
	}
	return ""
}
