package main

// The interceptor sits in front of the simulator's ServeMux. It reads each SOAP body once,
// counts the call, applies injected faults, answers the methods this launcher implements
// (or validates before delegating), and otherwise hands the untouched request on. Working at
// this layer keeps the simulator's own objects (and their type assertions) intact, and lets us
// answer methods whose types govmomi 0.24.2 does not know (GetDefaultKmsCluster, ...).

import (
	"bytes"
	stdxml "encoding/xml"
	"errors"
	"fmt"
	"io"
	"io/ioutil"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

type interceptor struct {
	next http.Handler
	st   *state
}

func (h *interceptor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := ioutil.ReadAll(io.LimitReader(r.Body, 64<<20))
	_ = r.Body.Close()
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	h.st.auth.observe(r, body)
	r.Body = ioutil.NopCloser(bytes.NewReader(body))
	switch {
	case h.st.esx && (strings.HasPrefix(r.URL.Path, "/rest/") || strings.HasPrefix(r.URL.Path, "/api/")):
		http.NotFound(w, r) // an ESXi host serves no vAPI endpoint
	case strings.HasPrefix(r.URL.Path, "/rest/"):
		h.serveREST(w, r)
	case r.Method == http.MethodPost && (r.URL.Path == "/sdk" || r.URL.Path == "/sdk/vimService"):
		h.serveSOAP(w, r)
	default:
		h.next.ServeHTTP(w, r)
	}
}

// soapCall is one decoded SOAP request.
type soapCall struct {
	name    string
	body    []byte
	this    types.ManagedObjectReference
	session string // value of the vmware_soap_session cookie
}

// Methods that work without a session (as on vCenter). The simulator also lets
// RetrieveProperties(Ex) through without one; we don't, so expired sessions really fail.
var noSessionMethods = map[string]bool{
	"RetrieveServiceContent": true, "Login": true, "LoginByToken": true,
	"LoginExtensionByCertificate": true, "CloneSession": true,
}

func (h *interceptor) serveSOAP(w http.ResponseWriter, r *http.Request) {
	body, err := ioutil.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	call := &soapCall{body: body}
	call.name, call.this = methodName(body)
	if c, err := r.Cookie(soap.SessionCookieName); err == nil {
		call.session = c.Value
	}
	h.st.auth.noteSOAPCall(call.name)
	if !sleepCtx(r, h.st.auth.latencyFor("soap")) {
		return // the client gave up
	}

	if !noSessionMethods[call.name] && sessionUser(call.session) == "" {
		writeFault(w, &types.NotAuthenticated{
			NoPermission: types.NoPermission{Object: call.this, PrivilegeId: "System.View"},
		}, "The session is not authenticated.")
		return
	}
	// Counted once past authentication: a call refused as NotAuthenticated never reached what
	// vCenter executes, and a client that renews its session and calls again made one call.
	h.st.count(call.name)

	if rule := h.st.takeRule(call.name, ""); rule != nil {
		if h.applyRule(w, r, rule, &call.this) {
			return
		}
	}

	if h.st.handleSOAP(w, r, call) {
		return
	}
	h.delegate(w, r, body)
}

// delegate passes the (already read) request to the simulator.
func (h *interceptor) delegate(w http.ResponseWriter, r *http.Request, body []byte) {
	rec := h.delegateRecorded(r, body)
	forward(w, rec, rec.Body.Bytes())
}

// delegateRecorded runs the simulator's handler and returns its response (written as vCenter
// writes it, see compactXSI) for inspection or patching; the caller must forward it with forward().
func (h *interceptor) delegateRecorded(r *http.Request, body []byte) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	r.Body = ioutil.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	h.next.ServeHTTP(rec, r)
	rec.Body = bytes.NewBuffer(compactXSI(rec.Body.Bytes()))
	return rec
}

var (
	envelopeXSI    = []byte(`xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"`)
	repeatedXSI    = []byte(` xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance"`)
	repeatedXSIUse = []byte(` XMLSchema-instance:type="`)
	xsiUse         = []byte(` xsi:type="`)
)

// compactXSI writes a SOAP answer's types as vCenter does: vCenter declares the xsi prefix once,
// on the envelope, and writes xsi:type="..."; govmomi's encoder declares the namespace again on
// every typed element. That made a fill page of 1000 VMs 2.3 MB instead of 1.3 MB, and
// slower to write and to read than vCenter's. Only attributes change: the patterns hold a quote,
// which element text never does (the encoder escapes it), so no value is touched.
func compactXSI(body []byte) []byte {
	head := body
	if len(head) > 1024 {
		head = head[:1024]
	}
	if !bytes.Contains(head, envelopeXSI) || !bytes.Contains(body, repeatedXSI) {
		return body
	}
	return bytes.ReplaceAll(bytes.ReplaceAll(body, repeatedXSI, nil), repeatedXSIUse, xsiUse)
}

func forward(w http.ResponseWriter, rec *httptest.ResponseRecorder, body []byte) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.Header().Del("Content-Length")
	w.WriteHeader(rec.Code)
	_, _ = w.Write(body)
}

// applyRule executes an injected fault; returns true when the request has been answered.
// this is the SOAP call's _this (nil for REST).
func (h *interceptor) applyRule(w http.ResponseWriter, r *http.Request, rule *faultRule,
	this *types.ManagedObjectReference) bool {
	if rule.HangSeconds > 0 {
		if !sleepCtx(r, rule.HangSeconds) {
			return true // client gave up
		}
	}
	switch {
	case rule.Drop:
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				_ = conn.Close()
				return true
			}
		}
		panic(http.ErrAbortHandler) // fallback: net/http closes the connection
	case rule.Fault != "" && this != nil:
		writeFault(w, newFault(rule.Fault, *this), "injected fault "+rule.Fault)
		return true
	case rule.HTTPStatus != 0 || rule.Fault != "":
		status := rule.HTTPStatus
		if status == 0 {
			status = http.StatusInternalServerError
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = fmt.Fprintf(w, `{"type":%q,"value":{"messages":[]}}`, restErrorType(rule.Fault))
		return true
	}
	return false // hang only: continue normally
}

func restErrorType(fault string) string {
	if fault == "" {
		return "com.vmware.vapi.std.errors.error"
	}
	return fault
}

var vimTypeFunc = types.TypeFunc()

// typeFunc mirrors the simulator's (unexported) lookup, tolerating "ns:Type" names.
func typeFunc(name string) (reflect.Type, bool) {
	t, ok := vimTypeFunc(name)
	if !ok {
		if parts := strings.SplitN(name, ":", 2); len(parts) == 2 {
			t, ok = vimTypeFunc(parts[1])
		}
	}
	return t, ok
}

// newFault instantiates a vim fault type by name (validated by the admin endpoint). A
// moref field left empty (NoPermission.object, ...) would not deserialise in pyvmomi, so
// "Object"/"Obj" is set to the called object.
func newFault(name string, this types.ManagedObjectReference) types.BaseMethodFault {
	if t, ok := typeFunc(name); ok {
		v := reflect.New(t)
		for _, field := range []string{"Object", "Obj"} {
			if f := v.Elem().FieldByName(field); f.IsValid() && f.CanSet() && f.Type() == reflect.TypeOf(this) {
				f.Set(reflect.ValueOf(this))
			}
		}
		if f, ok := v.Interface().(types.BaseMethodFault); ok {
			return f
		}
	}
	return &types.SystemError{Reason: "unknown injected fault " + name}
}

func isFaultName(name string) bool {
	t, ok := typeFunc(name)
	if !ok {
		return false
	}
	_, ok = reflect.New(t).Interface().(types.BaseMethodFault)
	return ok
}

// methodName finds the first element inside soapenv:Body and its _this argument without
// needing a govmomi type for the method.
func methodName(body []byte) (string, types.ManagedObjectReference) {
	d := stdxml.NewDecoder(bytes.NewReader(body))
	inBody := false
	for {
		tok, err := d.Token()
		if err != nil {
			return "", types.ManagedObjectReference{}
		}
		se, ok := tok.(stdxml.StartElement)
		if !ok {
			continue
		}
		if !inBody {
			inBody = se.Name.Local == "Body"
			continue
		}
		var args struct {
			This struct {
				Type  string `xml:"type,attr"`
				Value string `xml:",chardata"`
			} `xml:"_this"`
		}
		_ = d.DecodeElement(&args, &se)
		return se.Name.Local, moref(args.This.Type, strings.TrimSpace(args.This.Value))
	}
}

// decodeArgs decodes the method element into v with encoding/xml (names matched by local
// name), for methods govmomi has no request type for.
func decodeArgs(body []byte, method string, v interface{}) error {
	d := stdxml.NewDecoder(bytes.NewReader(body))
	for {
		tok, err := d.Token()
		if err != nil {
			return err
		}
		if se, ok := tok.(stdxml.StartElement); ok && se.Name.Local == method {
			return d.DecodeElement(v, &se)
		}
	}
}

// decodeVim decodes the request with the simulator's own decoder into govmomi's request type.
func decodeVim(body []byte) (interface{}, error) {
	m, err := simulator.UnmarshalBody(typeFunc, body)
	if err != nil {
		return nil, err
	}
	return m.Body, nil
}

// --- response encoding (same envelope shape as the simulator's) ---

type soapEnvelope struct {
	XMLName xml.Name    `xml:"soapenv:Envelope"`
	Enc     string      `xml:"xmlns:soapenc,attr"`
	Env     string      `xml:"xmlns:soapenv,attr"`
	XSD     string      `xml:"xmlns:xsd,attr"`
	XSI     string      `xml:"xmlns:xsi,attr"`
	Body    interface{} `xml:"soapenv:Body"`
}

type faultDetail struct {
	Fault types.AnyType
}

// MarshalXML renames the element to "${Type}Fault" with xsi:type, as vCenter does.
func (d *faultDetail) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	kind := reflect.TypeOf(d.Fault).Elem().Name()
	start.Name.Local = kind + "Fault"
	start.Attr = append(start.Attr,
		xml.Attr{Name: xml.Name{Local: "xmlns"}, Value: "urn:" + vim25.Namespace},
		xml.Attr{Name: xml.Name{Local: "xsi:type"}, Value: kind})
	return e.EncodeElement(d.Fault, start)
}

type soapFaultBody struct {
	Fault struct {
		XMLName xml.Name `xml:"soapenv:Fault"`
		Code    string   `xml:"faultcode"`
		String  string   `xml:"faultstring"`
		Detail  struct {
			Fault *faultDetail
		} `xml:"detail"`
	}
}

type resultBody struct {
	name string
	val  interface{}
}

func (r *resultBody) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	if err := e.EncodeToken(start); err != nil {
		return err
	}
	el := xml.StartElement{Name: xml.Name{Space: "urn:" + vim25.Namespace, Local: r.name}}
	if err := e.EncodeElement(r.val, el); err != nil {
		return err
	}
	return e.EncodeToken(start.End())
}

func writeEnvelope(w http.ResponseWriter, status int, body interface{}) {
	var out bytes.Buffer
	out.WriteString(xml.Header)
	e := xml.NewEncoder(&out)
	err := e.Encode(&soapEnvelope{
		Enc:  "http://schemas.xmlsoap.org/soap/encoding/",
		Env:  "http://schemas.xmlsoap.org/soap/envelope/",
		XSD:  "http://www.w3.org/2001/XMLSchema",
		XSI:  "http://www.w3.org/2001/XMLSchema-instance",
		Body: body,
	})
	if err == nil {
		err = e.Flush()
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(compactXSI(out.Bytes()))
}

// writeResult answers method with val as its <methodResponse>.
func writeResult(w http.ResponseWriter, method string, val interface{}) {
	writeEnvelope(w, http.StatusOK, &resultBody{name: method + "Response", val: val})
}

func writeFault(w http.ResponseWriter, fault types.BaseMethodFault, msg string) {
	b := &soapFaultBody{}
	b.Fault.Code = "ServerFaultCode"
	b.Fault.String = msg
	b.Fault.Detail.Fault = &faultDetail{Fault: fault}
	writeEnvelope(w, http.StatusInternalServerError, b)
}

// emptyResult is the body of a void method's response.
type emptyResult struct{}

// taskRef extracts the Task moref from a recorded "*_TaskResponse".
func taskRef(resp []byte) (types.ManagedObjectReference, error) {
	d := stdxml.NewDecoder(bytes.NewReader(resp))
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return types.ManagedObjectReference{}, errors.New("no returnval in response")
		}
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		if se, ok := tok.(stdxml.StartElement); ok && se.Name.Local == "returnval" {
			var v string
			if err := d.DecodeElement(&v, &se); err != nil {
				return types.ManagedObjectReference{}, err
			}
			return moref("Task", strings.TrimSpace(v)), nil
		}
	}
}

// --- sessions ---

// sessionUser returns the user name of a live SOAP session ("" if none). The simulator keeps
// sessions unexported; its per-session view of the SessionManager lists them.
func sessionUser(key string) string {
	if key == "" {
		return ""
	}
	for _, s := range sessionList() {
		if s.Key == key {
			return s.UserName
		}
	}
	return ""
}

func sessionList() []types.UserSession {
	probe := simulator.Session{
		UserSession: types.UserSession{Key: "vtpm-launcher-probe"},
		Registry:    simulator.NewRegistry(),
	}
	sm, ok := probe.Get(simulator.Map.SessionManager().Reference()).(*simulator.SessionManager)
	if !ok {
		return nil
	}
	return sm.SessionList
}

// expireSessions terminates every SOAP session, as an idle timeout on vCenter would.
func expireSessions() int {
	var keys []string
	for _, s := range sessionList() {
		keys = append(keys, s.Key)
	}
	if len(keys) == 0 {
		return 0
	}
	probe := simulator.Session{
		UserSession: types.UserSession{Key: "vtpm-launcher-probe"},
		Registry:    simulator.NewRegistry(),
	}
	simulator.Map.SessionManager().TerminateSession(&simulator.Context{Session: &probe},
		&types.TerminateSession{SessionId: keys})
	pruneNow() // watches of those sessions end now, with NotAuthenticated
	return len(keys)
}
