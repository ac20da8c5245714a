package httpfx_test

import (
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/httpfx/httpfx/internal/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	testutil.WaitingTestsInParallel()
	goleak.VerifyTestMain(m)
}

// echoUpgradeHandler answers every request but /probe with 101 Switching Protocols, then
// echoes each line it reads back, prefixed "echo: ", until the client closes. live, if set,
// counts the streams whose handler has not returned.
func echoUpgradeHandler(live *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/probe" {
			return
		}
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		if live != nil {
			live.Add(1)
			defer live.Add(-1)
		}
		defer conn.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		rw.Flush()
		for {
			line, err := rw.ReadString('\n')
			if err != nil {
				return
			}
			rw.WriteString("echo: " + line)
			if rw.Flush() != nil {
				return
			}
		}
	})
}
