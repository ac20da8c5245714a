module github.com/httpfx/httpfx/compat

go 1.24

require (
	github.com/hashicorp/go-retryablehttp v0.7.8
	github.com/httpfx/httpfx v0.0.0
	go.uber.org/fx v1.24.0
	go.uber.org/goleak v1.3.0
	go.uber.org/zap v1.28.0
)

require (
	github.com/hashicorp/go-cleanhttp v0.5.2 // indirect
	go.uber.org/dig v1.19.0 // indirect
	go.uber.org/multierr v1.10.0 // indirect
	go.yaml.in/yaml/v3 v3.0.6 // indirect
	golang.org/x/sys v0.20.0 // indirect
)

replace github.com/httpfx/httpfx => ../
