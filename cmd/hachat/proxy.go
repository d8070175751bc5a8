package main

import (
	"context"
	"errors"
	"io"
)

// runProxy is a placeholder until the proxy part lands.
func runProxy(ctx context.Context, args []string, out, errw io.Writer) error {
	return errors.New("proxy: not implemented yet")
}
