package httpfx_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/httpfx/httpfx"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
)

// TestCallsUpstream is the README's fxtest snippet.
func TestCallsUpstream(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "pong")
	}))
	defer upstream.Close()

	var client *http.Client
	app := fxtest.New(t, httpfx.Module, fx.Populate(&client))
	defer app.RequireStart().RequireStop()

	resp, err := client.Get(upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if b, _ := io.ReadAll(resp.Body); string(b) != "pong" {
		t.Fatalf("got %q", b)
	}
}

// normalize trims every line and drops empty ones, so that indentation does not matter.
func normalize(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

func containsRun(haystack, needle []string) bool {
	for i := 0; i+len(needle) <= len(haystack); i++ {
		if reflect.DeepEqual(haystack[i:i+len(needle)], needle) {
			return true
		}
	}
	return false
}

// Every Go snippet of the README is a piece of an example or test, so it compiles and runs.
func TestReadmeSnippets(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob("*_test.go")
	for _, dir := range []string{"httpfxtest", "otelhttpfx", "promhttpfx"} { // the last two are modules of their own: read, not built
		more, _ := filepath.Glob(filepath.Join(dir, "*_test.go"))
		files = append(files, more...)
	}
	var code []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		code = append(code, normalize(string(b))...)
	}
	blocks := strings.Split(string(readme), "```go\n")[1:]
	if len(blocks) == 0 {
		t.Fatal("no Go snippets found in README.md")
	}
	for _, b := range blocks {
		snippet, _, _ := strings.Cut(b, "```")
		if !containsRun(code, normalize(snippet)) {
			t.Errorf("README snippet is not part of any example or test:\n%s", snippet)
		}
	}
}

// The README's configuration table lists every field with its environment variable and the
// default DefaultConfig really has.
func TestReadmeConfigTable(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	var rows func(def reflect.Value, keyPrefix, envPrefix string)
	rows = func(def reflect.Value, keyPrefix, envPrefix string) {
		for i := range def.NumField() {
			f := def.Type().Field(i)
			key := keyPrefix + f.Tag.Get("yaml")
			env := envPrefix + strings.ToUpper(f.Tag.Get("yaml"))
			if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[time.Duration]() {
				rows(def.Field(i), key+".", env+"__")
				continue
			}
			row(t, readme, f.Name, key, env, def.Field(i).Interface())
		}
	}
	rows(reflect.ValueOf(httpfx.DefaultConfig()), "", httpfx.EnvPrefix)
}

// row checks that the README has the configuration table's row for the field name.
func row(t *testing.T, readme []byte, name, key, env string, def any) {
	t.Helper()
	var want string
	switch v := def.(type) {
	case time.Duration:
		want = v.String()
	case string:
		want = "(none)"
		if v != "" {
			want = v
		}
	case map[string]httpfx.UpstreamConfig:
		want = "(none)"
		env += "__<NAME>__<KEY>"
	case []int:
		want = "(none)"
		if len(v) > 0 {
			want = strings.Trim(strings.ReplaceAll(fmt.Sprint(v), " ", ","), "[]")
		}
	default:
		want = fmt.Sprint(v)
	}
	row := fmt.Sprintf("| `%s` | `%s` | %s |", key, env, want)
	if !strings.Contains(string(readme), row) {
		t.Errorf("README lacks the row for %s: %s", name, row)
	}
}
