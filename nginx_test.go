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
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/httpfx/httpfx/internal/testutil"
)

// nginx is a real nginx on a loopback address, started by the test with a generated
// configuration in a temporary directory and stopped by its pid when the test ends. Its
// access log has one line per request: the X-Request-Id, the method and the status. restart
// stops it gracefully and starts it again on the same address, as a deploy does.
type nginx struct {
	URL  string
	dir  string
	addr string
	bin  string
	conf string

	mu  sync.Mutex
	cmd *exec.Cmd
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

// startNginx starts nginx on a free loopback port with keepalive set as nginx's
// keepalive_timeout directive takes it ("100ms", or "1s 1" to also send "Keep-Alive:
// timeout=1").
func startNginx(t testing.TB, keepalive string) *nginx {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return startNginxAt(t, addr, keepalive)
}

// startNginxAt starts nginx listening on addr ("ip:port").
func startNginxAt(t testing.TB, addr, keepalive string) *nginx {
	t.Helper()
	n := &nginx{URL: "http://" + addr, dir: t.TempDir(), addr: addr, bin: nginxBinary(t)}
	conf := fmt.Sprintf(`
daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
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
`, n.dir, keepalive, addr)
	n.conf = filepath.Join(n.dir, "nginx.conf")
	if err := os.WriteFile(n.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	n.start(t)
	t.Cleanup(func() { n.stop(t) })
	return n
}

// start runs nginx and waits until it accepts connections.
func (n *nginx) start(t testing.TB) {
	t.Helper()
	cmd := exec.Command(n.bin, "-p", n.dir, "-c", n.conf)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.mu.Lock()
	n.cmd = cmd
	n.mu.Unlock()
	testutil.WaitFor(t, "nginx listens on "+n.addr, func() bool {
		c, err := net.Dial("tcp", n.addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// stop ends nginx gracefully (SIGQUIT: it stops listening, closes its idle connections,
// finishes the requests in progress and exits), by the pid in its pid file, which must be
// the process the test started, and waits for it.
func (n *nginx) stop(t testing.TB) {
	n.mu.Lock()
	cmd := n.cmd
	n.cmd = nil
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	if b, err := os.ReadFile(filepath.Join(n.dir, "nginx.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid == cmd.Process.Pid {
			syscall.Kill(pid, syscall.SIGQUIT)
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

// restart stops nginx gracefully and starts it again on the same address.
func (n *nginx) restart(t testing.TB) {
	t.Helper()
	n.stop(t)
	n.start(t)
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
