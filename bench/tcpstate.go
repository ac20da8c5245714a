package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Host-wide TCP and CPU accounting.
//
// TIME_WAIT accounting from /proc/net/tcp and /proc/net/tcp6. A TIME_WAIT socket stays on the
// side that closed first, for 60s on Linux. The client and the server run on the same host,
// so one table shows both sides: a client-side socket has the server's port as its remote
// port, a server-side one as its local port.
//
// Sockets from earlier cells are still there, so a cell's own are those absent from the
// snapshot taken before the cell, or present with a larger remaining timer (the 4-tuple was
// reused by a new connection that is in TIME_WAIT again).

// tcpTimeWait is the TCP state code of TIME_WAIT in /proc/net/tcp.
const tcpTimeWait = "06"

// twKey identifies a socket by its 4-tuple, as /proc prints it (hex address:port).
type twKey struct{ local, remote string }

// twSnapshot maps each TIME_WAIT socket to its remaining timer (in the kernel's clock ticks).
type twSnapshot map[twKey]uint64

// readTimeWait reads every TIME_WAIT socket of the host's network namespace.
func readTimeWait() (twSnapshot, error) {
	snap := make(twSnapshot)
	for _, path := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		if err := readTCPTable(path, snap); err != nil {
			return nil, err
		}
	}
	return snap, nil
}

func readTCPTable(path string, snap twSnapshot) error {
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) && strings.HasSuffix(path, "6") {
			return nil // no IPv6
		}
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[3] != tcpTimeWait {
			continue
		}
		var when uint64
		if _, w, ok := strings.Cut(fields[5], ":"); ok {
			when, _ = strconv.ParseUint(w, 16, 64)
		}
		snap[twKey{local: fields[1], remote: fields[2]}] = when
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}

// newTimeWait counts the TIME_WAIT sockets of after that are new since before and belong to
// connections with the server port: client-side (remote port = port) and server-side (local
// port = port).
func newTimeWait(before, after twSnapshot, port int) (client, server int) {
	for k, when := range after {
		if old, ok := before[k]; ok && when <= old {
			continue
		}
		if procPort(k.remote) == port {
			client++
		}
		if procPort(k.local) == port {
			server++
		}
	}
	return client, server
}

// procPort parses the port of a /proc/net/tcp address ("0100007F:1F90"), or returns -1.
func procPort(addr string) int {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return -1
	}
	p, err := strconv.ParseUint(addr[i+1:], 16, 16)
	if err != nil {
		return -1
	}
	return int(p)
}

// hostBusy is the CPU time all processes of the host have used so far (the "cpu" line of
// /proc/stat: everything but idle and iowait), at the kernel's clock-tick resolution.
func hostBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("read /proc/stat: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line)
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0, fmt.Errorf("unexpected /proc/stat line %q", line)
	}
	var busy uint64
	for i, f := range fields[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest time is already counted in user
			break
		}
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc/stat field %q: %w", f, err)
		}
		busy += v
	}
	return time.Duration(busy) * clockTick, nil
}

// clockTick is the unit of /proc/stat (USER_HZ), 100 per second on Linux.
const clockTick = 10 * time.Millisecond
