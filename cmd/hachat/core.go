package main

import (
	"context"
	"errors"
	"io"
)

// runCore is a placeholder until the core part lands.
func runCore(ctx context.Context, args []string, out, errw io.Writer) error {
	return errors.New("core: not implemented yet")
}
