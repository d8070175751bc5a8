package main

import (
	"context"
	"errors"
	"io"
)

// runDemo is a placeholder until the demo part lands.
func runDemo(ctx context.Context, args []string, out, errw io.Writer) error {
	return errors.New("demo: not implemented yet")
}
