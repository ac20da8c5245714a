package httpfx

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// EnvPrefix prefixes the environment variables that LoadEnv and ApplyEnv read: the variable
// for a field is EnvPrefix followed by the field's YAML key in upper case, for example
// HTTPFX_TIMEOUT=5s or HTTPFX_MAX_IDLE_CONNS_PER_HOST=256.
const EnvPrefix = "HTTPFX_"

// LoadYAML returns DefaultConfig overlaid with the YAML document b (keys as in Config's yaml
// tags, durations as "5s"), validated. Keys absent from b keep their defaults; an unknown key
// or a malformed value is an error naming the key.
func LoadYAML(b []byte) (Config, error) {
	c := DefaultConfig()
	if err := yaml.Unmarshal(b, &c); err != nil {
		return Config{}, wrapYAML(err)
	}
	return c, c.Validate()
}

// LoadYAMLFile is LoadYAML on the contents of the file at path.
func LoadYAMLFile(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("httpfx: config: %w", err)
	}
	return LoadYAML(b)
}

// LoadEnv returns DefaultConfig overlaid with the EnvPrefix variables of environ (as
// os.Environ returns it), validated. An unknown EnvPrefix variable or a malformed value is an
// error naming the variable.
func LoadEnv(environ []string) (Config, error) {
	c := DefaultConfig()
	if err := c.ApplyEnv(environ); err != nil {
		return Config{}, err
	}
	return c, c.Validate()
}

// ApplyEnv overlays c with the EnvPrefix variables of environ, leaving other fields as they
// are, so that environment variables can override a YAML file. Upstream entries use "__" to
// separate the name and key: HTTPFX_UPSTREAMS__PAYMENTS__BASE_URL=https://pay.internal and
// HTTPFX_UPSTREAMS__PAYMENTS__HEADERS__X_API_VERSION=2 (header "X-Api-Version"). It reports
// every unknown variable and malformed value, naming the variable; it does not call Validate.
func (c *Config) ApplyEnv(environ []string) error {
	c.Upstreams = cloneUpstreams(c.Upstreams)
	environ = slices.Sorted(slices.Values(environ))
	var errs []error
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		key, ok := strings.CutPrefix(name, EnvPrefix)
		if !ok {
			continue
		}
		if err := setEnv(reflect.ValueOf(c).Elem(), strings.Split(key, "__"), value); err != nil {
			errs = append(errs, fmt.Errorf("httpfx: config: %s: %w", quoteOdd(name), err))
		}
	}
	return errors.Join(errs...)
}

// UnmarshalYAML overlays c with the YAML mapping in node, leaving absent keys as they are, so
// that a Config embedded in a larger YAML document (with c set to DefaultConfig first) keeps
// the defaults it does not mention. Unknown keys and malformed values are errors naming the
// key.
func (c *Config) UnmarshalYAML(node *yaml.Node) error {
	if node.Kind == yaml.ScalarNode && node.Tag == "!!null" {
		return nil
	}
	c.Upstreams = cloneUpstreams(c.Upstreams)
	return errors.Join(decodeNode(reflect.ValueOf(c).Elem(), node, "")...)
}

// cloneUpstreams copies m and the Headers of its entries, so that overlaying a Config never
// changes a copy of it.
func cloneUpstreams(m map[string]UpstreamConfig) map[string]UpstreamConfig {
	if m == nil {
		return nil
	}
	out := make(map[string]UpstreamConfig, len(m))
	for name, u := range m {
		u.Headers = maps.Clone(u.Headers)
		out[name] = u
	}
	return out
}

// decodeNode overlays v, a struct with yaml tags, a map with string keys or a scalar field,
// with node. path is the dotted key of v, for errors.
func decodeNode(v reflect.Value, node *yaml.Node, path string) []error {
	fail := func(n *yaml.Node, format string, args ...any) []error {
		at := ""
		if path != "" {
			at = fmt.Sprintf("key %q: ", path)
		}
		return []error{fmt.Errorf("httpfx: config: line %d: %s%s", n.Line, at, fmt.Sprintf(format, args...))}
	}
	switch v.Kind() {
	case reflect.Struct, reflect.Map:
		if node.Kind != yaml.MappingNode {
			return fail(node, "want a mapping of keys to values")
		}
		var errs []error
		seen := make(map[string]bool, len(node.Content)/2)
		for i := 0; i+1 < len(node.Content); i += 2 {
			k, val := node.Content[i], node.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				errs = append(errs, fail(k, "keys must be strings")...)
				continue
			}
			sub := k.Value
			if path != "" {
				sub = path + "." + k.Value
			}
			if seen[k.Value] {
				errs = append(errs, fmt.Errorf("httpfx: config: line %d: key %q appears twice", k.Line, sub))
				continue
			}
			seen[k.Value] = true
			if v.Kind() == reflect.Map {
				errs = append(errs, decodeMapEntry(v, k.Value, func(elem reflect.Value) []error {
					return decodeNode(elem, val, sub)
				})...)
				continue
			}
			i, ok := fieldIndex(v.Type(), k.Value)
			if !ok {
				errs = append(errs, fmt.Errorf("httpfx: config: line %d: unknown key %q: known keys are %s",
					k.Line, sub, strings.Join(fieldKeys(v.Type()), ", ")))
				continue
			}
			errs = append(errs, decodeNode(v.Field(i), val, sub)...)
		}
		return errs
	case reflect.Slice:
		if node.Kind == yaml.SequenceNode { // a list: each item as a single value
			items := make([]string, 0, len(node.Content))
			for _, item := range node.Content {
				if item.Kind != yaml.ScalarNode {
					return fail(item, "want a list of single values")
				}
				items = append(items, item.Value)
			}
			if err := setField(v, strings.Join(items, ",")); err != nil {
				return fail(node, "%v", err)
			}
			return nil
		}
		fallthrough
	default:
		if node.Kind != yaml.ScalarNode || node.Tag == "!!null" {
			return fail(node, "want a single value")
		}
		if err := setField(v, node.Value); err != nil {
			return fail(node, "%v", err)
		}
		return nil
	}
}

// decodeMapEntry overlays the entry key of the map m with decode, starting from the entry's
// current value, so that a partial entry keeps the rest.
func decodeMapEntry(m reflect.Value, key string, decode func(reflect.Value) []error) []error {
	if m.IsNil() {
		m.Set(reflect.MakeMap(m.Type()))
	}
	elem := reflect.New(m.Type().Elem()).Elem()
	if cur := m.MapIndex(reflect.ValueOf(key)); cur.IsValid() {
		elem.Set(cur)
	}
	errs := decode(elem)
	m.SetMapIndex(reflect.ValueOf(key), elem)
	return errs
}

// setEnv overlays v with one environment variable: segs is its name after EnvPrefix, split
// at "__".
func setEnv(v reflect.Value, segs []string, value string) error {
	switch v.Kind() {
	case reflect.Struct:
		if len(segs) == 0 {
			return errors.New("names a group of settings, not one: add its key")
		}
		i, ok := fieldIndex(v.Type(), strings.ToLower(segs[0]))
		if !ok {
			return fmt.Errorf("unknown variable: known are %s", strings.Join(envNames(v.Type()), ", "))
		}
		return setEnv(v.Field(i), segs[1:], value)
	case reflect.Map:
		if len(segs) == 0 || segs[0] == "" {
			return errors.New("want NAME__KEY after the map's name")
		}
		key := strings.ToLower(segs[0])
		if v.Type().Elem().Kind() == reflect.String { // headers: X_API_VERSION is X-Api-Version
			key = http.CanonicalHeaderKey(strings.ReplaceAll(segs[0], "_", "-"))
			for _, k := range v.MapKeys() { // the environment overrides the file's spelling too
				if name := k.String(); name != key && http.CanonicalHeaderKey(name) == key {
					v.SetMapIndex(k, reflect.Value{})
				}
			}
		}
		return errors.Join(decodeMapEntry(v, key, func(elem reflect.Value) []error {
			if err := setEnv(elem, segs[1:], value); err != nil {
				return []error{err}
			}
			return nil
		})...)
	default:
		if len(segs) != 0 {
			return errors.New("unknown variable: this setting has no sub-keys")
		}
		return setField(v, value)
	}
}

// fieldIndex returns the index of the field of struct type t whose yaml key is key.
func fieldIndex(t reflect.Type, key string) (int, bool) {
	for i := range t.NumField() {
		if yamlKey(t.Field(i)) == key {
			return i, true
		}
	}
	return 0, false
}

// fieldKeys lists the yaml keys of struct type t.
func fieldKeys(t reflect.Type) []string {
	var keys []string
	for i := range t.NumField() {
		if k := yamlKey(t.Field(i)); k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}

// envNames lists the environment variables of struct type t's fields, for error messages.
func envNames(t reflect.Type) []string {
	var names []string
	for i := range t.NumField() {
		k := strings.ToUpper(yamlKey(t.Field(i)))
		if t.Field(i).Type.Kind() == reflect.Map {
			k += "__<NAME>__<KEY>"
		}
		if t == reflect.TypeFor[Config]() {
			k = EnvPrefix + k
		}
		names = append(names, k)
	}
	return names
}

func yamlKey(f reflect.StructField) string {
	key, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if key == "-" {
		return ""
	}
	return key
}

var durationType = reflect.TypeFor[time.Duration]()

// setField parses s into the scalar field v, by v's type.
func setField(v reflect.Value, s string) error {
	s = strings.TrimSpace(s)
	switch {
	case v.Type() == durationType:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("invalid duration %q: want a number with a unit, such as \"500ms\", \"5s\" or \"1m30s\"", s)
		}
		v.SetInt(int64(d))
	case v.Kind() == reflect.Int || v.Kind() == reflect.Int64:
		n, err := strconv.ParseInt(s, 10, v.Type().Bits())
		if err != nil {
			return fmt.Errorf("invalid integer %q: want a whole number such as 100", s)
		}
		v.SetInt(n)
	case v.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("invalid boolean %q: want true or false", s)
		}
		v.SetBool(b)
	case v.Kind() == reflect.String:
		v.SetString(s)
	case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Int: // "502,503,504"
		var list []int
		for _, item := range strings.Split(s, ",") {
			if item = strings.TrimSpace(item); item == "" {
				continue
			}
			n, err := strconv.Atoi(item)
			if err != nil {
				return fmt.Errorf("invalid list %q: want whole numbers separated by commas, such as 502,503,504", s)
			}
			list = append(list, n)
		}
		v.Set(reflect.ValueOf(list))
	default:
		return fmt.Errorf("unsupported field type %s", v.Type())
	}
	return nil
}

func wrapYAML(err error) error {
	if strings.HasPrefix(err.Error(), "httpfx: ") {
		return err
	}
	return fmt.Errorf("httpfx: config: invalid YAML: %w", err)
}

// quoteOdd quotes a variable name unless it is plain, so that no name can break a message.
func quoteOdd(name string) string {
	if strings.ContainsFunc(name, func(r rune) bool {
		return !(r == '_' || '0' <= r && r <= '9' || 'A' <= r && r <= 'Z' || 'a' <= r && r <= 'z')
	}) {
		return strconv.Quote(name)
	}
	return name
}
