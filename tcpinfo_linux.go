//go:build linux && !386

package httpfx

import (
	"encoding/binary"
	"syscall"
	"unsafe"
)

// tcpiBytesAcked is the offset of tcpi_bytes_acked in Linux's struct tcp_info (since 4.1):
// how many bytes of the stream the peer's TCP has acknowledged.
const tcpiBytesAcked = 120

// ackedBytes returns how many bytes the peer's TCP acknowledged on the connection, or false
// if the system cannot tell.
func (c *connHealth) ackedBytes() (int64, bool) {
	if c.raw == nil {
		return 0, false
	}
	var (
		buf  [256]byte
		n    = uint32(len(buf))
		errn syscall.Errno
	)
	if err := c.raw.Control(func(fd uintptr) {
		_, _, errn = syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP, syscall.TCP_INFO,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	}); err != nil || errn != 0 || n < tcpiBytesAcked+8 {
		return 0, false
	}
	return int64(binary.NativeEndian.Uint64(buf[tcpiBytesAcked:])), true
}
