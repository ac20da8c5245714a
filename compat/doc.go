// Package compat holds tests of httpfx with libraries that users pair with it and that the
// core module must not depend on, such as go-retryablehttp. It has no API.
package compat
