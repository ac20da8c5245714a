package httpfx_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/httpfx/httpfx/internal/testutil"
)

// nginx is a real nginx on a free loopback port, started by the test with a generated
// configuration in a temporary directory and stopped by its pid when the test ends. Its
// access log has one line per request: the X-Request-Id, the method and the status.
type nginx struct {
	URL  string
	dir  string
	addr string
}

// nginxBinary finds nginx, or skips the test with how to install it; in CI (CI=true) a
// missing nginx fails the test instead.
func nginxBinary(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"nginx", "/usr/sbin/nginx"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	const how = "nginx is not installed: apt-get install nginx-light (Debian) to run the real-upstream tests"
	if os.Getenv("CI") == "true" {
		t.Fatal(how)
	}
	t.Skip(how)
	return ""
}

// startNginx starts nginx with keepalive set as nginx's keepalive_timeout directive takes it
// ("100ms", or "1s 1" to also send "Keep-Alive: timeout=1").
func startNginx(t testing.TB, keepalive string) *nginx {
	t.Helper()
	bin := nginxBinary(t)
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	conf := fmt.Sprintf(`
daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
	log_format ids '$http_x_request_id $request_method $status';
	access_log %[1]s/access.log ids;
	client_body_temp_path %[1]s/body;
	keepalive_timeout %[2]s;
	keepalive_requests 1000000;
	server {
		listen %[3]s;
		location / { return 200 "ok\n"; }
	}
}
`, dir, keepalive, addr)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", path)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n := &nginx{URL: "http://" + addr, dir: dir, addr: addr}
	t.Cleanup(func() { n.stop(t, cmd) })
	testutil.WaitFor(t, "nginx listens", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return n
}

// stop ends nginx by the pid in its pid file (the process the test started) and waits for it.
func (n *nginx) stop(t testing.TB, cmd *exec.Cmd) {
	if b, err := os.ReadFile(filepath.Join(n.dir, "nginx.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid == cmd.Process.Pid {
			syscall.Kill(pid, syscall.SIGQUIT) // graceful: finish the requests, close
		}
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Errorf("nginx did not stop on SIGQUIT; killed")
	}
}

// ids returns how many times nginx logged each request id.
func (n *nginx) ids(t testing.TB) map[string]int {
	t.Helper()
	f, err := os.Open(filepath.Join(n.dir, "access.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]int{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		if id, _, ok := strings.Cut(s.Text(), " "); ok && id != "-" {
			out[id]++
		}
	}
	return out
}
