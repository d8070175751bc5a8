package main

import (
	"context"
	"errors"
	"io"
)

// runBench is a placeholder until the bench part lands.
func runBench(ctx context.Context, args []string, out, errw io.Writer) error {
	return errors.New("bench: not implemented yet")
}
