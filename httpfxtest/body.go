package httpfxtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
)

// body tracks a response body until its caller closes it or reads it to EOF. It sits under
// httpfx's own body, which never closes it on its own (but for a 101 stream cut at stop), so
// every Close it sees is its caller's. It is safe for a Close concurrent with a Read.
type body struct {
	rc       io.ReadCloser
	env      *Env
	ctx      context.Context // the request's, as httpfx sent it: says why it ended, if it did
	seq      int64
	method   string
	url      string    // without userinfo, query and fragment
	upstream string    // the upstream routed by name that sent it, if any
	stack    []uintptr // from the recorder's caller outwards
	done     atomic.Bool
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish()
	}
	return n, err
}

func (b *body) Close() error {
	b.finish()
	return b.rc.Close()
}

// finish notes that the caller is done with the body.
func (b *body) finish() {
	if b.done.CompareAndSwap(false, true) {
		e := b.env
		e.mu.Lock()
		delete(e.bodies, b)
		e.mu.Unlock()
	}
}

// report says which request the body belongs to and where it was sent from.
func (b *body) report() string {
	var s strings.Builder
	fmt.Fprintf(&s, "httpfxtest: %s %s", b.method, b.url)
	if b.upstream != "" {
		fmt.Fprintf(&s, " (upstream %q)", b.upstream)
	}
	s.WriteString(": response body never closed nor read to EOF")
	switch {
	case b.ctx.Err() == nil:
	case errors.Is(context.Cause(b.ctx), context.DeadlineExceeded):
		s.WriteString("; httpfx ended the request when its timeout expired")
	case b.env.cut():
		s.WriteString("; httpfx cut it at stop, after Config.DrainTimeout")
	}
	for i, f := range callSite(b.stack) {
		what := "called from"
		if i == 0 {
			what = "sent at"
		}
		fmt.Fprintf(&s, "\n\t%s %s:%d in %s", what, filepath.Base(f.File), f.Line, shortFunc(f.Function))
	}
	return s.String()
}

// rwBody keeps a 101 Switching Protocols body writable, as net/http returns it.
type rwBody struct {
	*body
	w io.Writer
}

func (b *rwBody) Write(p []byte) (int, error) { return b.w.Write(p) }

var (
	_ io.ReadCloser      = (*body)(nil)
	_ io.ReadWriteCloser = (*rwBody)(nil)
)

// track records b as open, or reports false once the test has ended.
func (e *Env) track(b *body) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.finished {
		return false
	}
	e.seq++
	b.seq = e.seq
	e.bodies[b] = struct{}{}
	return true
}

// callSite returns the frames of stack from the code that sent the request outwards: past
// the round trippers, the clients of net/http and httpfx, up to 3 frames, stopping at the
// testing package.
func callSite(stack []uintptr) []runtime.Frame {
	var fs []runtime.Frame
	frames := runtime.CallersFrames(stack)
	for {
		f, more := frames.Next()
		fs = append(fs, f)
		if !more {
			break
		}
	}
	// Round trippers of the app may sit between the recorder and the clients: skip to the
	// first frame of a client, then past all of them.
	i := 0
	for i < len(fs) && !clientPkg(funcPkg(fs[i].Function)) {
		i++
	}
	if i == len(fs) {
		i = 0 // sent straight through the round tripper: its caller sent it
	}
	for i < len(fs) && (clientPkg(funcPkg(fs[i].Function)) || funcPkg(fs[i].Function) == "github.com/httpfx/httpfx/httpfxtest") {
		i++
	}
	var out []runtime.Frame
	for ; i < len(fs) && len(out) < 3; i++ {
		if p := funcPkg(fs[i].Function); p == "testing" || p == "runtime" {
			break
		}
		out = append(out, fs[i])
	}
	return out
}

// clientPkg reports whether the package's frames are the clients' own code.
func clientPkg(pkg string) bool {
	return pkg == "net/http" || pkg == "github.com/httpfx/httpfx"
}

// funcPkg returns the package path of a function name such as "net/http.(*Client).Do".
func funcPkg(fn string) string {
	slash := strings.LastIndexByte(fn, '/')
	if dot := strings.IndexByte(fn[slash+1:], '.'); dot >= 0 {
		return fn[:slash+1+dot]
	}
	return fn
}

// shortFunc drops the package path before the package name: "billing.(*Client).Charge".
func shortFunc(fn string) string {
	return fn[strings.LastIndexByte(fn, '/')+1:]
}
