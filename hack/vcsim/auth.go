package main

// Who tried to log in, and did the password ever arrive. Every request to the SOAP/REST
// endpoint is checked for the configured password (body, headers, URL; raw, XML- and
// URL-escaped, and inside Basic authorization), so a test can prove that a client never sent
// credentials to a server it should not trust (the ESX mode below is such a server). Also:
// REST session tokens, their expiry on demand, and an added latency per call.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"html"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
)

const restSessionHeader = "vmware-api-session-id"

type authState struct {
	mu                sync.Mutex
	password          string
	soapLoginAttempts int // Login, LoginByToken, LoginExtensionByCertificate, CloneSession
	soapLogins        int // successful Login
	restLoginAttempts int // POST /rest/com/vmware/cis/session or /api/session
	restLogins        int
	passwordSeen      int
	passwordSeenIn    []string           // "METHOD path" of the first requests carrying it
	restTokens        map[string]bool    // issued and not logged out; false once expired
	latency           map[string]float64 // "soap" / "rest" -> seconds added to every call
}

func newAuthState(password string) *authState {
	return &authState{password: password, restTokens: map[string]bool{}, latency: map[string]float64{}}
}

// carriesPassword reports whether the request holds the password anywhere.
func (a *authState) carriesPassword(r *http.Request, body []byte) bool {
	pw := a.password
	forms := [][]byte{[]byte(pw), []byte(html.EscapeString(pw)), []byte(url.QueryEscape(pw))}
	for _, f := range forms {
		if bytes.Contains(body, f) || strings.Contains(r.URL.RawQuery, string(f)) || strings.Contains(r.URL.Path, string(f)) {
			return true
		}
	}
	if _, pass, ok := r.BasicAuth(); ok && strings.Contains(pass, pw) {
		return true
	}
	for _, values := range r.Header {
		for _, v := range values {
			if strings.Contains(v, pw) {
				return true
			}
			if raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(v, "Basic ")); err == nil &&
				bytes.Contains(raw, []byte(pw)) {
				return true
			}
		}
	}
	return false
}

// observe records one request (its body already read) before anything else handles it.
func (a *authState) observe(r *http.Request, body []byte) {
	seen := a.carriesPassword(r, body)
	isRESTLogin := r.Method == http.MethodPost && r.URL.Query().Get("~action") == "" &&
		(r.URL.Path == restSession || r.URL.Path == "/api/session")
	a.mu.Lock()
	defer a.mu.Unlock()
	if seen {
		a.passwordSeen++
		if len(a.passwordSeenIn) < 20 {
			a.passwordSeenIn = append(a.passwordSeenIn, r.Method+" "+r.URL.Path)
		}
	}
	if isRESTLogin {
		a.restLoginAttempts++
	}
}

// soapLoginMethods are the SOAP ways to obtain a session.
var soapLoginMethods = map[string]bool{
	"Login": true, "LoginByToken": true, "LoginExtensionByCertificate": true, "CloneSession": true,
}

func (a *authState) noteSOAPCall(method string) {
	if !soapLoginMethods[method] {
		return
	}
	a.mu.Lock()
	a.soapLoginAttempts++
	a.mu.Unlock()
}

func (a *authState) noteSOAPLogin() {
	a.mu.Lock()
	a.soapLogins++
	a.mu.Unlock()
}

func (a *authState) latencyFor(kind string) float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.latency[kind]
}

func (a *authState) setLatency(kind string, seconds float64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.latency[kind] = seconds
}

func restToken(r *http.Request) string {
	if id := r.Header.Get(restSessionHeader); id != "" {
		return id
	}
	if c, err := r.Cookie(restSessionHeader); err == nil {
		return c.Value
	}
	return ""
}

// restExpired reports a request whose REST session was expired on demand.
func (a *authState) restExpired(r *http.Request) bool {
	id := restToken(r)
	if id == "" {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	live, known := a.restTokens[id]
	return known && !live
}

// expireREST invalidates every live REST session token; returns how many there were.
func (a *authState) expireREST() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for id, live := range a.restTokens {
		if live {
			a.restTokens[id] = false
			n++
		}
	}
	return n
}

// serveRESTSession passes a session login/logout to the vapi simulator, recording the token.
func (h *interceptor) serveRESTSession(w http.ResponseWriter, r *http.Request) {
	a := h.st.auth
	if r.Method == http.MethodDelete {
		a.mu.Lock()
		delete(a.restTokens, restToken(r))
		a.mu.Unlock()
		h.next.ServeHTTP(w, r)
		return
	}
	rec := httptest.NewRecorder()
	h.next.ServeHTTP(rec, r)
	var resp struct {
		Value string `json:"value"`
	}
	if rec.Code == http.StatusOK && json.Unmarshal(rec.Body.Bytes(), &resp) == nil && resp.Value != "" {
		a.mu.Lock()
		a.restLogins++
		a.restTokens[resp.Value] = true
		a.mu.Unlock()
	}
	forward(w, rec, rec.Body.Bytes())
}

// authReport is the admin view (GET /_sim/auth).
func (s *state) authReport() map[string]interface{} {
	active := len(sessionList())
	a := s.auth
	a.mu.Lock()
	defer a.mu.Unlock()
	rest := 0
	for _, live := range a.restTokens {
		if live {
			rest++
		}
	}
	return map[string]interface{}{
		"soapLoginAttempts":  a.soapLoginAttempts,
		"soapLogins":         a.soapLogins,
		"restLoginAttempts":  a.restLoginAttempts,
		"restLogins":         a.restLogins,
		"activeSoapSessions": active,
		"activeRestSessions": rest,
		"passwordSeen":       a.passwordSeen,
		"passwordSeenIn":     append([]string{}, a.passwordSeenIn...),
	}
}

func (s *state) resetAuthCounters() {
	a := s.auth
	a.mu.Lock()
	defer a.mu.Unlock()
	a.soapLoginAttempts, a.soapLogins, a.restLoginAttempts, a.restLogins, a.passwordSeen = 0, 0, 0, 0, 0
	a.passwordSeenIn = nil
}
