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

// errUsage reports bad flags or arguments; the user has already been told
// why (parseArgs).
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
	fs.String("config", "", "YAML file with these options (keys as the flag names); flags override it")
	register(fs)
	return parseArgs(fs, fmt.Sprintf("Usage: hachat %s [flags]\n\n%s\n\nFlags:\n", name, summary), args, errw)
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
