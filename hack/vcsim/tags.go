package main

// REST (/rest/com/vmware/cis/...) checks the vapi simulator lacks: session login checks the
// password (it accepts any), tag attach refuses objects missing from the inventory and a
// second tag of a SINGLE-cardinality category on the same object. The tagging state stays in
// the vapi simulator; the checks read it through in-process calls to the same handler with
// the caller's session.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/ioutil"
	"net/http"
	"net/http/httptest"
	"path"
	"strings"

	"github.com/vmware/govmomi/simulator"
)

const (
	restSession     = "/rest/com/vmware/cis/session"
	restTag         = "/rest/com/vmware/cis/tagging/tag/id:"
	restCategory    = "/rest/com/vmware/cis/tagging/category/id:"
	restAssociation = "/rest/com/vmware/cis/tagging/tag-association"
)

type restObject struct {
	Type string `json:"type"`
	ID   string `json:"id"`
}

func (h *interceptor) serveREST(w http.ResponseWriter, r *http.Request) {
	h.st.count(restCallName(r))
	if !sleepCtx(r, h.st.auth.latencyFor("rest")) {
		return
	}
	if rule := h.st.takeRule("", r.URL.Path); rule != nil {
		if h.applyRule(w, r, rule, nil) {
			return
		}
	}
	if h.st.auth.restExpired(r) {
		restError(w, http.StatusUnauthorized, "com.vmware.vapi.std.errors.unauthenticated", "Authentication required.")
		return
	}
	action := r.URL.Query().Get("~action")
	if r.Method == http.MethodPost && r.URL.Path == restSession && action == "" {
		if user, pass, ok := r.BasicAuth(); ok {
			h.st.mu.Lock()
			pw, known := h.st.users[user]
			h.st.mu.Unlock()
			if !known || pw != pass {
				restError(w, http.StatusUnauthorized, "com.vmware.vapi.std.errors.unauthenticated",
					"Authentication required.")
				return
			}
		}
	}
	if r.URL.Path == restSession && action == "" && (r.Method == http.MethodPost || r.Method == http.MethodDelete) {
		h.serveRESTSession(w, r)
		return
	}
	if r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, restAssociation) {
		body, err := ioutil.ReadAll(r.Body)
		_ = r.Body.Close()
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.Body = ioutil.NopCloser(bytes.NewReader(body))
		if status, kind, msg := h.checkAttach(r, action, body); status != 0 {
			restError(w, status, kind, msg)
			return
		}
		r.Body = ioutil.NopCloser(bytes.NewReader(body))
	}
	h.next.ServeHTTP(w, r)
}

func restError(w http.ResponseWriter, status int, kind, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]interface{}{
		"type": kind,
		"value": map[string]interface{}{
			"messages": []map[string]interface{}{{"id": kind, "default_message": msg, "args": []string{}}},
		},
	})
}

// checkAttach validates attach requests; status 0 means "let it through".
func (h *interceptor) checkAttach(r *http.Request, action string, body []byte) (int, string, string) {
	var spec struct {
		ObjectID  *restObject  `json:"object_id"`
		ObjectIDs []restObject `json:"object_ids"`
		TagIDs    []string     `json:"tag_ids"`
	}
	var pairs [][2]interface{} // (tag id, object)
	switch action {
	case "attach", "attach-tag-to-multiple-objects":
		if err := json.Unmarshal(body, &spec); err != nil {
			return 0, "", ""
		}
		tag := strings.TrimPrefix(path.Base(r.URL.Path), "id:")
		objs := spec.ObjectIDs
		if spec.ObjectID != nil {
			objs = append(objs, *spec.ObjectID)
		}
		for _, o := range objs {
			pairs = append(pairs, [2]interface{}{tag, o})
		}
	case "attach-multiple-tags-to-object":
		if err := json.Unmarshal(body, &spec); err != nil || spec.ObjectID == nil {
			return 0, "", ""
		}
		for _, t := range spec.TagIDs {
			pairs = append(pairs, [2]interface{}{t, *spec.ObjectID})
		}
	default:
		return 0, "", ""
	}
	for _, p := range pairs {
		tag, obj := p[0].(string), p[1].(restObject)
		if simulator.Map.Get(moref(obj.Type, obj.ID)) == nil {
			// vCenter checks the attach privilege on the object first: an object it cannot
			// find is reported as unauthorized (403), not as a bad request.
			return http.StatusForbidden, "com.vmware.vapi.std.errors.unauthorized",
				fmt.Sprintf("Object %s:%s does not exist in the inventory.", obj.Type, obj.ID)
		}
		if msg := h.cardinalityConflict(r, tag, obj); msg != "" {
			return http.StatusBadRequest, "com.vmware.vapi.std.errors.invalid_argument", msg
		}
	}
	return 0, "", ""
}

// cardinalityConflict reports a tag of the same SINGLE category already on obj.
func (h *interceptor) cardinalityConflict(r *http.Request, tagID string, obj restObject) string {
	var tag struct {
		Value struct {
			CategoryID string `json:"category_id"`
		} `json:"value"`
	}
	if !h.restGet(r, http.MethodGet, restTag+tagID, nil, &tag) {
		return "" // unknown tag: the simulator answers 404 itself
	}
	var cat struct {
		Value struct {
			Cardinality string `json:"cardinality"`
			Name        string `json:"name"`
		} `json:"value"`
	}
	if !h.restGet(r, http.MethodGet, restCategory+tag.Value.CategoryID, nil, &cat) ||
		cat.Value.Cardinality != "SINGLE" {
		return ""
	}
	var attached struct {
		Value []string `json:"value"`
	}
	req, _ := json.Marshal(map[string]restObject{"object_id": obj})
	if !h.restGet(r, http.MethodPost, restAssociation+"?~action=list-attached-tags", req, &attached) {
		return ""
	}
	for _, other := range attached.Value {
		if other == tagID {
			continue
		}
		var o struct {
			Value struct {
				CategoryID string `json:"category_id"`
			} `json:"value"`
		}
		if h.restGet(r, http.MethodGet, restTag+other, nil, &o) && o.Value.CategoryID == tag.Value.CategoryID {
			return fmt.Sprintf("Category %s has SINGLE cardinality and object %s already has tag %s of it.",
				cat.Value.Name, obj.ID, other)
		}
	}
	return ""
}

// restGet calls the vapi simulator in-process with the caller's credentials.
func (h *interceptor) restGet(orig *http.Request, method, url string, body []byte, out interface{}) bool {
	req := httptest.NewRequest(method, url, bytes.NewReader(body))
	for _, k := range []string{"vmware-api-session-id", "Cookie", "Authorization"} {
		if v := orig.Header.Get(k); v != "" {
			req.Header.Set(k, v)
		}
	}
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	h.next.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		return false
	}
	return json.Unmarshal(rec.Body.Bytes(), out) == nil
}

// restCallName names a REST call for the call counters, ids left out, so that tests can count
// them like SOAP methods: "GET tagging/category", "POST tagging/tag-association:list-attached-objects-on-tags".
func restCallName(r *http.Request) string {
	var parts []string
	for _, part := range strings.Split(strings.TrimPrefix(r.URL.Path, "/rest/com/vmware/cis/"), "/") {
		if part != "" && !strings.HasPrefix(part, "id:") {
			parts = append(parts, part)
		}
	}
	name := r.Method + " " + strings.Join(parts, "/")
	if action := r.URL.Query().Get("~action"); action != "" {
		name += ":" + action
	}
	return name
}
