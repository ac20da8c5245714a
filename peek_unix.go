//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package httpfx

import (
	"errors"
	"syscall"
)

// closedByPeer reports whether the server has closed or reset the idle connection, or sent it
// data unasked (an idle HTTP/1.1 connection receives nothing but a TLS close_notify): one
// non-blocking peek at the socket, which consumes nothing. It reports false when it cannot
// tell. Only the goroutine of the armed write calls it.
func (c *connHealth) closedByPeer() bool {
	if c.raw == nil {
		return false
	}
	if c.peekFn == nil {
		c.peekFn = c.peekFD // once per connection: the method value allocates
	}
	c.peekClosed = false
	if err := c.raw.Control(c.peekFn); err != nil {
		return false
	}
	return c.peekClosed
}

// peekFD peeks at the socket fd and sets peekClosed.
func (c *connHealth) peekFD(fd uintptr) {
	var b [1]byte
	n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	switch {
	case err == nil: // n == 0: the peer's FIN; n > 0: data nobody asked for
		c.peekClosed = n >= 0
	case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EWOULDBLOCK), errors.Is(err, syscall.EINTR):
	default: // a reset, or another error: the connection is unusable
		c.peekClosed = true
	}
}
