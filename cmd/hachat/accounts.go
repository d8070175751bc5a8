package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/hachat/hachat/interaction/auth"
)

const accountsSummary = `Manage the Interaction Server's built-in accounts (an accounts file of
argon2id password hashes; the server re-reads it when it changes).

  hachat accounts add    --file FILE --id ID --role agent|supervisor [--nickname NAME] [--generate]
  hachat accounts remove --file FILE --id ID
  hachat accounts list   --file FILE

add reads the password from the first line of standard input, or with
--generate makes a random one and prints it. The file is written with mode 0600.`

func runAccounts(ctx context.Context, args []string, out, errw io.Writer) error {
	return accountsCmd(args, os.Stdin, out, errw)
}

// accountsCmd is runAccounts with its standard input passed in (for tests).
func accountsCmd(args []string, in io.Reader, out, errw io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(errw, accountsSummary)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return flag.ErrHelp
		}
		return errUsage
	}
	verb := args[0]
	var opts struct {
		File     string `yaml:"file"`
		ID       string `yaml:"id"`
		Role     string `yaml:"role"`
		Nickname string `yaml:"nickname"`
		Generate bool   `yaml:"generate"`
	}
	opts.File = ".hachat/accounts.json"
	err := parseFlags("accounts "+verb, accountsSummary, args[1:], errw, &opts, func(fs *flag.FlagSet) {
		fs.StringVar(&opts.File, "file", opts.File, "accounts file")
		fs.StringVar(&opts.ID, "id", opts.ID, "agent id (add, remove)")
		fs.StringVar(&opts.Role, "role", opts.Role, "role: agent or supervisor (add)")
		fs.StringVar(&opts.Nickname, "nickname", opts.Nickname, "name customers see (add; default the id)")
		fs.BoolVar(&opts.Generate, "generate", opts.Generate, "make a random password and print it (add)")
	})
	if err != nil {
		return err
	}
	switch verb {
	case "add":
		pw := ""
		if opts.Generate {
			pw = rand.Text()
		} else {
			line, err := bufio.NewReader(in).ReadString('\n')
			if err != nil && line == "" {
				return fmt.Errorf("read the password from standard input: %w", err)
			}
			pw = strings.TrimRight(line, "\r\n")
		}
		if err := auth.AddAccount(opts.File, opts.ID, opts.Nickname, opts.Role, pw, auth.DefaultHashParams()); err != nil {
			return err
		}
		if opts.Generate {
			fmt.Fprintf(out, "%s\n", pw)
		}
		fmt.Fprintf(errw, "added %s (%s) to %s\n", opts.ID, opts.Role, opts.File)
		return nil
	case "remove":
		if err := auth.RemoveAccount(opts.File, opts.ID); err != nil {
			return err
		}
		fmt.Fprintf(errw, "removed %s from %s\n", opts.ID, opts.File)
		return nil
	case "list":
		list, err := auth.ReadAccounts(opts.File)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tROLE\tNICKNAME")
		for _, a := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", a.ID, a.Role, a.Nickname)
		}
		return tw.Flush()
	default:
		fmt.Fprintln(errw, accountsSummary)
		return errUsage
	}
}
