package main

import (
	"context"
	"errors"
	"io"
)

// runWitness is a placeholder until the witness part lands.
func runWitness(ctx context.Context, args []string, out, errw io.Writer) error {
	return errors.New("witness: not implemented yet")
}
