// Package body holds the one rule, shared by httpfx and httpfxtest, for whether a response
// has a body that its caller must close or read.
package body

import "net/http"

// None reports whether resp, the response to req, has no body to read: a response to HEAD, a
// 204 or 304, or one whose Content-Length is 0 (but a 101, whose body is the upgraded
// stream), or whose Body is nil or http.NoBody. It judges by the response, not by the Body's
// type, so that the answer does not change with the protocol (HTTP/2 gives such responses a
// body of its own) or with a round tripper that wraps every body (otelhttp).
func None(req *http.Request, resp *http.Response) bool {
	switch {
	case resp.Body == nil || resp.Body == http.NoBody:
		return true
	case resp.StatusCode == http.StatusSwitchingProtocols:
		return false
	case req.Method == http.MethodHead, resp.StatusCode == http.StatusNoContent, resp.StatusCode == http.StatusNotModified:
		return true
	}
	return resp.ContentLength == 0
}
