//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package httpfx

// closedByPeer cannot peek at a socket on this system: it reports false, and a connection the
// server closed is found by net/http as without httpfx (see peek_unix.go).
func (c *connHealth) closedByPeer() bool { return false }
