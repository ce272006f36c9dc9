package main

import (
	"context"
	"errors"
	"io"
)

// demoCmd is filled in by the demo apps work.
func demoCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("demo: not built yet")
}
