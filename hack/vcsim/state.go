package main

// Launcher-side state (everything the simulator does not model) and the SOAP dispatch table.
// Inventory state stays in simulator.Map; this holds only what we add: call counters, fault
// rules, users/roles/permissions and key providers.

import (
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

type faultRule struct {
	Method      string  `json:"method,omitempty"` // SOAP method name
	Path        string  `json:"path,omitempty"`   // REST path prefix
	Count       int     `json:"count"`
	Fault       string  `json:"fault,omitempty"` // vim fault type name, e.g. NotAuthenticated
	HTTPStatus  int     `json:"http_status,omitempty"`
	HangSeconds float64 `json:"hang_seconds,omitempty"`
	Drop        bool    `json:"drop,omitempty"`
}

type permission struct {
	Entity    string `json:"entity"`
	Principal string `json:"principal"`
	Role      string `json:"role"`
	Propagate bool   `json:"propagate"`
}

type provider struct {
	ID       string
	Type     string // "kmip" (managementType vCenter) or "native" (nativeProvider)
	BackedUp bool
	Default  bool
}

type state struct {
	mu     sync.Mutex
	ep     *endpoint
	esx    bool // serving govmomi's ESX model (main.go -esx)
	auth   *authState
	counts map[string]int
	rules  []*faultRule

	users map[string]string          // username -> password
	roles map[string]map[string]bool // role name -> privilege ids
	perms map[types.ManagedObjectReference][]permission

	providers []*provider // registration order, as ListKmipServers returns them
	crypto    *cryptoObject

	shutdownDelays map[types.ManagedObjectReference]float64 // VM -> seconds its guest takes to shut down
	hangNext       map[types.ManagedObjectReference]string  // VM -> cancel mode of its next, never-ending reconfigure
	hungTasks      map[types.ManagedObjectReference]string  // never-ending task -> cancel mode
}

func newState(username, password string) *state {
	return &state{
		counts: map[string]int{},
		auth:   newAuthState(password),
		users:  map[string]string{username: password},
		roles:  map[string]map[string]bool{},
		perms:  map[types.ManagedObjectReference][]permission{},

		shutdownDelays: map[types.ManagedObjectReference]float64{},
		hangNext:       map[types.ManagedObjectReference]string{},
		hungTasks:      map[types.ManagedObjectReference]string{},
	}
}

func (s *state) init() {
	s.initAuthz()
	s.initCrypto()
	s.initHosts()
	s.initTPMPresent()
	for name := range s.users {
		rootFolder := serviceContent().RootFolder
		s.perms[rootFolder] = append(s.perms[rootFolder],
			permission{Entity: rootFolder.Value, Principal: name, Role: "Admin", Propagate: true})
	}
}

func serviceContent() types.ServiceContent {
	return simulator.Map.Get(moref("ServiceInstance", "ServiceInstance")).(*simulator.ServiceInstance).Content
}

func (s *state) count(method string) {
	if method == "" {
		return
	}
	s.mu.Lock()
	s.counts[method]++
	s.mu.Unlock()
}

// takeRule consumes one use of the first rule matching a SOAP method or a REST path.
func (s *state) takeRule(method, path string) *faultRule {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range s.rules {
		match := (method != "" && r.Method == method) || (path != "" && r.Path != "" && strings.HasPrefix(path, r.Path))
		if !match {
			continue
		}
		r.Count--
		if r.Count <= 0 {
			s.rules = append(s.rules[:i], s.rules[i+1:]...)
		}
		cp := *r
		return &cp
	}
	return nil
}

func sleepCtx(r *http.Request, seconds float64) bool {
	if seconds <= 0 {
		return true
	}
	select {
	case <-time.After(time.Duration(seconds * float64(time.Second))):
		return true
	case <-r.Context().Done():
		return false
	}
}

// handleSOAP answers or validates the methods this launcher changes; false means "delegate".
func (s *state) handleSOAP(w http.ResponseWriter, r *http.Request, c *soapCall) bool {
	if c.this.Type == "CryptoManagerKmip" {
		if s.handleCrypto(w, c) {
			return true
		}
	}
	switch c.name {
	case "Login":
		return s.login(w, c)
	case "ReconfigVM_Task":
		return s.reconfigVM(w, r, c)
	case "ShutdownGuest", "RebootGuest", "StandbyGuest":
		return s.guestOp(w, c)
	case "QueryConfigOptionEx":
		return s.queryConfigOptionEx(w, c)
	case "SetField":
		return s.setField(c)
	case "HasPrivilegeOnEntity", "HasPrivilegeOnEntities":
		return s.hasPrivilege(w, c)
	case "RetrieveProperties", "RetrievePropertiesEx", "ContinueRetrievePropertiesEx", "CheckForUpdates":
		return s.propertyCollector(w, r, c)
	case "WaitForUpdates", "WaitForUpdatesEx":
		key := waitKey(c.session, c.this)
		waitContexts.Store(key, r.Context())
		defer waitContexts.Delete(key)
		return s.propertyCollector(w, r, c)
	case "CancelTask":
		return s.cancelTask(w, c)
	case "CreateVM_Task", "CloneVM_Task":
		return s.createVM(w, r, c)
	}
	return false
}

func (s *state) login(w http.ResponseWriter, c *soapCall) bool {
	req, err := decodeVim(c.body)
	login, ok := req.(*types.Login)
	if err != nil || !ok {
		return false
	}
	s.mu.Lock()
	pw, known := s.users[login.UserName]
	s.mu.Unlock()
	if !known || pw != login.Password {
		writeFault(w, &types.InvalidLogin{}, "Cannot complete login due to an incorrect user name or password.")
		return true
	}
	s.auth.noteSOAPLogin()
	return false // the simulator creates the session (it accepts any non-empty credentials)
}

// entity returns the managed entity for ref, or nil.
func entity(ref types.ManagedObjectReference) mo.Entity {
	e, _ := simulator.Map.Get(ref).(mo.Entity)
	return e
}
