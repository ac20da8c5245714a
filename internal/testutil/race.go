//go:build race

package testutil

// RaceEnabled reports whether the test binary was built with the race detector.
const RaceEnabled = true
