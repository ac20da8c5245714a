module github.com/httpfx/httpfx/bench

go 1.24

replace github.com/httpfx/httpfx => ../

require (
	github.com/hashicorp/go-cleanhttp v0.5.2
	github.com/httpfx/httpfx v0.0.0-00010101000000-000000000000
)

require (
	go.uber.org/dig v1.19.0 // indirect
	go.uber.org/fx v1.24.0 // indirect
	go.uber.org/multierr v1.10.0 // indirect
	go.uber.org/zap v1.28.0 // indirect
	go.yaml.in/yaml/v3 v3.0.6 // indirect
	golang.org/x/sys v0.0.0-20220412211240-33da011f77ad // indirect
)
