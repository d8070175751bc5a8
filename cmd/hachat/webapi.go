package main

import (
	"context"
	"errors"
	"io"
)

// runWebAPI is a placeholder until the webapi part lands.
func runWebAPI(ctx context.Context, args []string, out, errw io.Writer) error {
	return errors.New("webapi: not implemented yet")
}
