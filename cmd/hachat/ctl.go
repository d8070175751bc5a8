package main

import (
	"context"
	"errors"
	"io"
)

// runCtl is a placeholder until the ctl part lands.
func runCtl(ctx context.Context, args []string, out, errw io.Writer) error {
	return errors.New("ctl: not implemented yet")
}
