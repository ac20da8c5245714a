package httpfx

import (
	"net/url"
	"testing"
)

func TestNoProxyMatch(t *testing.T) {
	list, err := parseNoProxy("example.com, .internal, 10.0.0.0/8, 192.168.1.7, api.test:8443, [::1]:9000")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		give string
		want bool
	}{
		{"http://example.com/", true},
		{"http://www.example.com/", true},
		{"http://notexample.com/", false},
		{"http://svc.internal/", true},
		{"http://internal/", false},
		{"http://10.1.2.3:8080/", true},
		{"http://11.1.2.3/", false},
		{"http://192.168.1.7/", true},
		{"https://api.test:8443/", true},
		{"https://api.test/", false},
		{"http://[::1]:9000/", true},
		{"http://[::1]:9001/", false},
	}
	for _, tt := range tests {
		u, _ := url.Parse(tt.give)
		if got := list.match(u); got != tt.want {
			t.Errorf("match(%s) = %v, want %v", tt.give, got, tt.want)
		}
	}
	all, _ := parseNoProxy("*")
	if u, _ := url.Parse("http://anything/"); !all.match(u) {
		t.Error(`"*" does not match everything`)
	}
}

func TestKeepsCredentials(t *testing.T) {
	tests := []struct {
		from, to string
		want     bool
	}{
		{"https://a.com/x", "https://a.com/y", true},
		{"https://a.com/x", "https://A.com:443/y", true},
		{"http://a.com/x", "https://a.com/y", true},
		{"https://a.com/x", "http://a.com/y", false},
		{"https://a.com/x", "https://a.com:8443/y", false},
		{"https://a.com/x", "https://api.a.com/y", false},
		{"https://a.com/x", "https://b.com/y", false},
		{"http://127.0.0.1:80/x", "http://127.0.0.1:81/y", false},
	}
	for _, tt := range tests {
		from, _ := url.Parse(tt.from)
		to, _ := url.Parse(tt.to)
		if got := keepsCredentials(from, to); got != tt.want {
			t.Errorf("keepsCredentials(%s, %s) = %v, want %v", tt.from, tt.to, got, tt.want)
		}
	}
}
