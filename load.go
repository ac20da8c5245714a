package httpfx

import (
	"errors"
	"fmt"
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
// are, so that environment variables can override a YAML file. It reports every unknown
// variable and malformed value; it does not call Validate.
func (c *Config) ApplyEnv(environ []string) error {
	environ = slices.Sorted(slices.Values(environ))
	var errs []error
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		key, ok := strings.CutPrefix(name, EnvPrefix)
		if !ok {
			continue
		}
		f, ok := fieldByKey(strings.ToLower(key))
		if !ok {
			errs = append(errs, fmt.Errorf("httpfx: config: unknown environment variable %s: known are %s",
				name, strings.Join(knownKeys(func(k string) string { return EnvPrefix + strings.ToUpper(k) }), ", ")))
			continue
		}
		if err := setField(reflect.ValueOf(c).Elem().Field(f.index), value); err != nil {
			errs = append(errs, fmt.Errorf("httpfx: config: %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// UnmarshalYAML overlays c with the YAML mapping in node, leaving absent keys as they are, so
// that a Config embedded in a larger YAML document (with c set to DefaultConfig first) keeps
// the defaults it does not mention. Unknown keys and malformed values are errors naming the key.
func (c *Config) UnmarshalYAML(node *yaml.Node) error {
	if node.Kind == yaml.ScalarNode && node.Tag == "!!null" {
		return nil
	}
	if node.Kind != yaml.MappingNode {
		return fmt.Errorf("httpfx: config: line %d: want a mapping of keys to values", node.Line)
	}
	var errs []error
	seen := make(map[string]bool, len(node.Content)/2)
	for i := 0; i+1 < len(node.Content); i += 2 {
		k, v := node.Content[i], node.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			errs = append(errs, fmt.Errorf("httpfx: config: line %d: keys must be strings", k.Line))
			continue
		}
		f, ok := fieldByKey(k.Value)
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("httpfx: config: line %d: unknown key %q: known keys are %s",
				k.Line, k.Value, strings.Join(knownKeys(func(k string) string { return k }), ", ")))
			continue
		case seen[k.Value]:
			errs = append(errs, fmt.Errorf("httpfx: config: line %d: key %q appears twice", k.Line, k.Value))
			continue
		case v.Kind != yaml.ScalarNode || v.Tag == "!!null":
			errs = append(errs, fmt.Errorf("httpfx: config: line %d: key %q: want a single value", v.Line, k.Value))
			continue
		}
		seen[k.Value] = true
		if err := setField(reflect.ValueOf(c).Elem().Field(f.index), v.Value); err != nil {
			errs = append(errs, fmt.Errorf("httpfx: config: line %d: key %q: %w", v.Line, k.Value, err))
		}
	}
	return errors.Join(errs...)
}

// configField is one loadable field of Config.
type configField struct {
	key   string // the yaml tag
	index int    // the field index in Config
}

// configFields lists Config's loadable fields in declaration order. It is computed on each
// call: loading is rare, and a package-level cache would be mutable global state.
func configFields() []configField {
	t := reflect.TypeFor[Config]()
	fields := make([]configField, 0, t.NumField())
	for i := range t.NumField() {
		if key, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); key != "" && key != "-" {
			fields = append(fields, configField{key: key, index: i})
		}
	}
	return fields
}

func fieldByKey(key string) (configField, bool) {
	for _, f := range configFields() {
		if f.key == key {
			return f, true
		}
	}
	return configField{}, false
}

func knownKeys(name func(string) string) []string {
	var keys []string
	for _, f := range configFields() {
		keys = append(keys, name(f.key))
	}
	return keys
}

var durationType = reflect.TypeFor[time.Duration]()

// setField parses s into the field v, by v's type.
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
	default:
		return fmt.Errorf("unsupported field type %s", v.Type())
	}
	return nil
}

func wrapYAML(err error) error {
	if strings.HasPrefix(err.Error(), "httpfx: ") {
		return err
	}
	return fmt.Errorf("httpfx: config: %w", err)
}
