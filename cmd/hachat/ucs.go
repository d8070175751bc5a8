package main

import (
	"context"
	"errors"
	"io"
)

// runUCS is a placeholder until the ucs part lands.
func runUCS(ctx context.Context, args []string, out, errw io.Writer) error {
	return errors.New("ucs: not implemented yet")
}
