package main

import (
	"bytes"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The demo runs, loses nothing at stop, and prints the connection figures.
func TestRun(t *testing.T) {
	var out bytes.Buffer
	if err := run(&out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"sum of squares 1..100 = 338350, 40 times, 0 failed",
		"upstream: 4000 requests over",
		"stopped: 8 sent, 8 completed, 0 lost; httpfx cut 0, 0 connections open",
		"errors.Is ErrClosed: true",
		"httpfx client stopped",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
