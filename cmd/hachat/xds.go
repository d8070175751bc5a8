package main

import (
	"context"
	"errors"
	"io"
)

// runXDS is a placeholder until the xds part lands.
func runXDS(ctx context.Context, args []string, out, errw io.Writer) error {
	return errors.New("xds: not implemented yet")
}
