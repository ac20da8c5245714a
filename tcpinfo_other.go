//go:build !linux || 386

package httpfx

// ackedBytes cannot read TCP_INFO's acknowledged bytes on this system: it reports false, and
// a request that failed after it was written is never replayed here (see tcpinfo_linux.go).
func (c *connHealth) ackedBytes() (int64, bool) { return 0, false }
