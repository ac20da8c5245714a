package httpfxtest_test

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeT is a testing.TB that records failures instead of failing, so that a test can check
// what httpfxtest reports. Methods it does not override go to the real test.
type fakeT struct {
	testing.TB
	mu       sync.Mutex
	errs     []string
	cleanups []func()
}

func (f *fakeT) Helper()             {}
func (f *fakeT) Logf(string, ...any) {}
func (f *fakeT) Log(...any)          {}
func (f *fakeT) Fail()               { f.Errorf("Fail") }
func (f *fakeT) Error(args ...any) {
	f.Errorf("%s", fmt.Sprint(args...))
}

func (f *fakeT) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs = append(f.errs, fmt.Sprintf(format, args...))
}

func (f *fakeT) FailNow() { runtime.Goexit() }
func (f *fakeT) Fatalf(format string, args ...any) {
	f.Errorf(format, args...)
	f.FailNow()
}
func (f *fakeT) Fatal(args ...any) {
	f.Error(args...)
	f.FailNow()
}

func (f *fakeT) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

func (f *fakeT) Failed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.errs) > 0
}

// runFake runs body as a test with a fakeT, on a goroutine of its own so that FailNow ends
// only that, then runs its cleanups, and returns what it reported.
func runFake(t *testing.T, body func(t *fakeT)) []string {
	t.Helper()
	f := &fakeT{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		body(f)
	}()
	<-done
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
	return f.errs
}

// lineOf returns the file:line of the line after its call, as httpfxtest reports it.
func lineOf() string {
	_, file, line, _ := runtime.Caller(1)
	return fmt.Sprintf("%s:%d", file[strings.LastIndexByte(file, '/')+1:], line+1)
}
