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

// envPrefix starts the environment variable of every flag: --admin-token
// is HACHAT_ADMIN_TOKEN (Kubernetes Secrets, container environments).
const envPrefix = "HACHAT_"

// envName returns the environment variable of the flag called name.
func envName(name string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// parseFlags fills file from its defaults (already set by the caller), then
// from the YAML file named by --config (or HACHAT_CONFIG), then from the
// environment (HACHAT_<FLAG>, see envName), then from the flags that
// register binds. Flags win over the environment, the environment over the
// file, the file over the defaults.
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
	if err := applyEnv(fs, os.LookupEnv); err != nil {
		return err
	}
	return parseArgs(fs, fmt.Sprintf("Usage: hachat %s [flags]\n\n%s\n\nEvery flag also comes from the environment as HACHAT_<FLAG> (dashes as underscores:\nHACHAT_ADMIN_TOKEN); flags override the environment, which overrides --config.\n\nFlags:\n", name, summary), args, errw)
}

// applyEnv sets every flag of fs whose environment variable (envName) is
// set, before the command line is parsed. A bad value is an error that
// names the variable.
func applyEnv(fs *flag.FlagSet, lookup func(string) (string, bool)) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" {
			return
		}
		if v, ok := lookup(envName(f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", envName(f.Name), v, err))
			}
		}
	})
	return errors.Join(errs...)
}

// configPath finds --config in args (or HACHAT_CONFIG) before the flags
// are parsed.
func configPath(args []string) string {
	if p := argConfigPath(args); p != "" {
		return p
	}
	return os.Getenv(envName("config"))
}

// argConfigPath finds --config in args.
func argConfigPath(args []string) string {
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
