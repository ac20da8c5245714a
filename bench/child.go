package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"time"
)

// child is the parent's handle on the server process. Stop must always be called, also when
// anything after startChild fails: it closes the child's stdin, waits, and kills it if it
// does not exit in time.
type child struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	info    serverInfo
	roots   *x509.CertPool  // trusts the child's certificate
	control *http.Transport // for GET /stats only; never one of the clients under test
	stopped bool
}

// startChild re-executes this binary as the server, reads its serverInfo line (bounded by
// timeout) and returns the handle.
func startChild(timeout time.Duration) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable: %w", err)
	}
	cmd := exec.Command(exe, serveFlag)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("server stdin: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		stdin.Close()
		return nil, fmt.Errorf("server stdout: %w", err)
	}
	if err := cmd.Start(); err != nil {
		stdin.Close()
		return nil, fmt.Errorf("start server: %w", err)
	}
	c := &child{cmd: cmd, stdin: stdin, control: &http.Transport{}}

	// Read the one line in a goroutine so that the wait is bounded; on timeout, stopping the
	// child closes the pipe, which ends the read, and we wait for the goroutine.
	type lineResult struct {
		line []byte
		err  error
	}
	got := make(chan lineResult, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadBytes('\n')
		got <- lineResult{line, err}
	}()
	var r lineResult
	select {
	case r = <-got:
	case <-time.After(timeout):
		c.cmd.Process.Kill() // closes the child's end of stdout, which ends the read
		<-got
		c.Stop()
		return nil, fmt.Errorf("server did not report its addresses within %v", timeout)
	}
	if r.err != nil {
		c.Stop()
		return nil, fmt.Errorf("read server addresses: %w", r.err)
	}
	if err := json.Unmarshal(r.line, &c.info); err != nil {
		c.Stop()
		return nil, fmt.Errorf("decode server addresses %q: %w", r.line, err)
	}
	c.roots = x509.NewCertPool()
	if !c.roots.AppendCertsFromPEM([]byte(c.info.CertPEM)) {
		c.Stop()
		return nil, errors.New("server sent no usable certificate")
	}
	for _, m := range modes() {
		if c.info.Addrs[m.name] == "" {
			c.Stop()
			return nil, fmt.Errorf("server sent no address for mode %s", m.name)
		}
	}
	return c, nil
}

// Stop ends the child: it closes its stdin, waits up to 5s for it to exit, then kills it,
// and always reaps it. It is safe to call more than once.
func (c *child) Stop() error {
	if c.stopped {
		return nil
	}
	c.stopped = true
	c.control.CloseIdleConnections()
	c.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("server exit: %w", err)
		}
		return nil
	case <-time.After(5 * time.Second):
		c.cmd.Process.Kill()
		<-done
		return errors.New("server did not exit within 5s of closing its stdin; killed")
	}
}

// stats fetches the child's counters from its control listener.
func (c *child) stats(ctx context.Context) (serverStats, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.info.Control+"/stats", nil)
	if err != nil {
		return serverStats{}, fmt.Errorf("stats request: %w", err)
	}
	resp, err := c.control.RoundTrip(req)
	if err != nil {
		return serverStats{}, fmt.Errorf("get server stats: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return serverStats{}, fmt.Errorf("get server stats: %s: %s", resp.Status, b)
	}
	var st serverStats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return serverStats{}, fmt.Errorf("decode server stats: %w", err)
	}
	return st, nil
}

// waitIdle polls the child until the mode's server has no more open connections than
// baseline, bounded by timeout, and returns how many more it still has (0 when it got there).
func (c *child) waitIdle(ctx context.Context, mode string, baseline int64, timeout time.Duration) (int64, error) {
	deadline := time.Now().Add(timeout)
	for {
		st, err := c.stats(ctx)
		if err != nil {
			return 0, err
		}
		extra := st.ConnsOpen[mode] - baseline
		if extra <= 0 || time.Now().After(deadline) {
			return max(extra, 0), nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// endpoint returns the origin URL of mode's listener, with a trailing slash, and the URL of a
// request that the server answers after delay.
func (c *child) endpoint(m mode, delay time.Duration) (base, url string) {
	scheme := "http"
	if m.tls {
		scheme = "https"
	}
	base = scheme + "://" + c.info.Addrs[m.name] + "/"
	url = base
	if delay > 0 {
		url += "sleep/" + delay.String()
	}
	return base, url
}

// port returns the port of mode's listener.
func (c *child) port(m mode) (int, error) {
	addr := c.info.Addrs[m.name]
	_, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, fmt.Errorf("server address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return 0, fmt.Errorf("server port %q: %w", portStr, err)
	}
	return port, nil
}
