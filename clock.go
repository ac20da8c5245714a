package httpfx

import "time"

// clock reads the monotonic clock as nanoseconds since the owner was built: one cheap read,
// with no wall clock and no allocation. Connections and idle bounds keep their times on it.
type clock struct{ epoch time.Time }

func (c *clock) now() int64 { return int64(time.Since(c.epoch)) }
