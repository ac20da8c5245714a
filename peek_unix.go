//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package httpfx

import (
	"errors"
	"syscall"
)

// closedByPeer reports whether the server has closed or reset the idle connection, or sent it
// data unasked (an idle HTTP/1.1 connection receives nothing but a TLS close_notify): one
// non-blocking peek at the socket, which consumes nothing. It reports false when it cannot
// tell.
func (c *trackedConn) closedByPeer() bool {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case err == nil: // n == 0: the peer's FIN; n > 0: data nobody asked for
			closed = n >= 0
		case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EWOULDBLOCK), errors.Is(err, syscall.EINTR):
		default: // a reset, or another error: the connection is unusable
			closed = true
		}
	})
	return closed
}
