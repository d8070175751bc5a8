package main

import (
	"context"
	"errors"
	"io"
)

// runInteraction is a placeholder until the interaction part lands.
func runInteraction(ctx context.Context, args []string, out, errw io.Writer) error {
	return errors.New("interaction: not implemented yet")
}
