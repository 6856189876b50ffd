package main

// Admin endpoint: plain JSON over HTTP on loopback, under /_sim/. Tests use it to switch the
// vCenter behaviours on and off per test (hack/testbed/vcsim.py wraps every route). It runs
// on its own listener so it stays reachable while the SOAP/REST endpoint is stopped.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func adminMux(st *state) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, "/_sim"), "/"), "/")
		status, res := st.admin(r, parts)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		if res == nil {
			res = map[string]bool{"ok": status < 300}
		}
		_ = json.NewEncoder(w).Encode(res)
	})
}

func bad(format string, args ...interface{}) (int, interface{}) {
	return http.StatusBadRequest, map[string]string{"error": fmt.Sprintf(format, args...)}
}

func notFound(what string) (int, interface{}) {
	return http.StatusNotFound, map[string]string{"error": what + " not found"}
}

// entityTypes are tried in turn to turn a bare moid into a moref.
var entityTypes = []string{
	"VirtualMachine", "Folder", "Datacenter", "ClusterComputeResource", "ComputeResource",
	"HostSystem", "ResourcePool", "Datastore", "Network", "DistributedVirtualPortgroup", "VirtualApp",
}

func findEntity(moid string) (types.ManagedObjectReference, bool) {
	for _, t := range entityTypes {
		ref := moref(t, moid)
		if entity(ref) != nil {
			return ref, true
		}
	}
	return types.ManagedObjectReference{}, false
}

func (s *state) admin(r *http.Request, p []string) (int, interface{}) {
	decode := func(v interface{}) error {
		if r.Body == nil {
			return nil
		}
		defer r.Body.Close()
		err := json.NewDecoder(r.Body).Decode(v)
		if err != nil && err.Error() == "EOF" {
			return nil
		}
		return err
	}
	route := r.Method + " " + p[0]
	switch {
	case route == "GET health":
		return http.StatusOK, nil

	case route == "GET key-providers":
		return http.StatusOK, s.providerList()
	case route == "POST key-providers" && len(p) == 1:
		var req struct {
			ID       string `json:"id"`
			Type     string `json:"type"`
			Default  bool   `json:"default"`
			BackedUp bool   `json:"backedUp"`
		}
		if err := decode(&req); err != nil {
			return bad("%v", err)
		}
		if req.Type == "registered" {
			return bad("type must be kmip or native")
		}
		if err := s.addProvider(provider{ID: req.ID, Type: req.Type, Default: req.Default, BackedUp: req.BackedUp}); err != nil {
			return bad("%v", err)
		}
		return http.StatusCreated, nil
	case route == "DELETE key-providers" && len(p) == 2:
		if !s.removeProvider(p[1]) {
			return notFound("key provider " + p[1])
		}
		return http.StatusOK, nil
	case route == "POST key-providers" && len(p) == 3 && p[2] == "backup":
		req := struct {
			BackedUp *bool `json:"backedUp"`
		}{}
		if err := decode(&req); err != nil {
			return bad("%v", err)
		}
		if !s.markBackedUp(p[1], req.BackedUp == nil || *req.BackedUp) {
			return notFound("key provider " + p[1])
		}
		return http.StatusOK, nil

	case route == "POST hosts" && len(p) == 3 && p[2] == "product":
		var req struct {
			Version string `json:"version"`
			Build   string `json:"build"`
		}
		if err := decode(&req); err != nil || req.Version == "" || req.Build == "" {
			return bad("version and build are required")
		}
		h, ok := simulator.Map.Get(moref("HostSystem", p[1])).(*simulator.HostSystem)
		if !ok {
			return notFound("host " + p[1])
		}
		setHostProduct(h, req.Version, req.Build)
		return http.StatusOK, nil

	case route == "GET roles":
		return http.StatusOK, s.roleNames()
	case route == "POST roles":
		var req struct {
			Name       string   `json:"name"`
			Privileges []string `json:"privileges"`
		}
		if err := decode(&req); err != nil || req.Name == "" {
			return bad("name is required")
		}
		s.createRole(req.Name, req.Privileges)
		return http.StatusCreated, nil
	case route == "GET privileges":
		return http.StatusOK, allPrivileges
	case route == "POST users":
		var req struct {
			Username string `json:"username"`
			Password string `json:"password"`
		}
		if err := decode(&req); err != nil || req.Username == "" || req.Password == "" {
			return bad("username and password are required")
		}
		s.mu.Lock()
		s.users[req.Username] = req.Password
		s.mu.Unlock()
		return http.StatusCreated, nil
	case route == "POST permissions":
		var req permission
		if err := decode(&req); err != nil {
			return bad("%v", err)
		}
		ref, ok := findEntity(req.Entity)
		if !ok {
			return notFound("entity " + req.Entity)
		}
		if err := s.setPermission(req, ref.Type); err != nil {
			return bad("%v", err)
		}
		return http.StatusOK, nil

	case route == "GET faults":
		s.mu.Lock()
		defer s.mu.Unlock()
		return http.StatusOK, s.rules
	case route == "POST faults":
		var req faultRule
		if err := decode(&req); err != nil {
			return bad("%v", err)
		}
		if (req.Method == "") == (req.Path == "") {
			return bad("exactly one of method or path is required")
		}
		if req.Fault != "" && req.Method != "" && !isFaultName(req.Fault) {
			return bad("unknown vim fault type %q", req.Fault)
		}
		if req.Fault == "" && req.HTTPStatus == 0 && req.HangSeconds <= 0 && !req.Drop {
			return bad("one of fault, http_status, hang_seconds, drop is required")
		}
		if req.Count <= 0 {
			req.Count = 1
		}
		s.mu.Lock()
		s.rules = append(s.rules, &req)
		s.mu.Unlock()
		return http.StatusCreated, nil
	case route == "DELETE faults":
		s.mu.Lock()
		s.rules = nil
		s.mu.Unlock()
		return http.StatusOK, nil

	case route == "POST endpoint" && len(p) == 2 && p[1] == "stop":
		s.ep.stop()
		return http.StatusOK, nil
	case route == "POST endpoint" && len(p) == 2 && p[1] == "start":
		if err := s.ep.start(); err != nil {
			return http.StatusInternalServerError, map[string]string{"error": err.Error()}
		}
		return http.StatusOK, nil
	case route == "GET endpoint":
		return http.StatusOK, map[string]bool{"running": s.ep.running()}

	case route == "GET calls":
		s.mu.Lock()
		defer s.mu.Unlock()
		out := make(map[string]int, len(s.counts))
		for k, v := range s.counts {
			out[k] = v
		}
		return http.StatusOK, out
	case route == "DELETE calls":
		s.mu.Lock()
		s.counts = map[string]int{}
		s.mu.Unlock()
		return http.StatusOK, nil

	case route == "POST vms" && len(p) == 3:
		vm, ok := simulator.Map.Get(moref("VirtualMachine", p[1])).(*simulator.VirtualMachine)
		if !ok {
			return notFound("vm " + p[1])
		}
		switch p[2] {
		case "tasks":
			return http.StatusCreated, map[string]string{"task": startTaskOn(vm).Value}
		case "tools":
			var req struct {
				Running bool `json:"running"`
			}
			if err := decode(&req); err != nil {
				return bad("%v", err)
			}
			setToolsRunning(vm, req.Running)
			return http.StatusOK, nil
		case "hang-reconfigure":
			var req struct {
				Cancel string `json:"cancel"`
			}
			if err := decode(&req); err != nil || !validCancelMode(req.Cancel) {
				return bad("cancel must be allow, refuse or ignore")
			}
			s.setHangReconfigure(vm.Self, req.Cancel)
			return http.StatusOK, nil
		case "shutdown-delay":
			var req struct {
				Seconds float64 `json:"seconds"`
			}
			if err := decode(&req); err != nil {
				return bad("%v", err)
			}
			s.setShutdownDelay(vm.Reference(), req.Seconds)
			return http.StatusOK, nil
		}
	case route == "POST tasks" && len(p) == 3 && p[2] == "finish":
		if err := finishTask(moref("Task", p[1])); err != nil {
			return notFound("task " + p[1])
		}
		s.mu.Lock()
		delete(s.hungTasks, moref("Task", p[1]))
		s.mu.Unlock()
		return http.StatusOK, nil

	case route == "POST sessions" && len(p) == 2 && p[1] == "expire":
		return http.StatusOK, map[string]int{"expired": expireSessions()}
	case route == "POST sessions" && len(p) == 2 && p[1] == "expire-rest":
		return http.StatusOK, map[string]int{"expired": s.auth.expireREST()}
	case route == "GET auth":
		return http.StatusOK, s.authReport()
	case route == "DELETE auth":
		s.resetAuthCounters()
		return http.StatusOK, nil
	case route == "GET watch":
		watchStats.Lock()
		defer watchStats.Unlock()
		return http.StatusOK, map[string]int{
			"objectsRead": watchStats.ObjectsRead, "membershipScans": watchStats.MembershipScans,
		}
	case route == "POST latency":
		var req struct {
			SOAP float64 `json:"soap"`
			REST float64 `json:"rest"`
		}
		if err := decode(&req); err != nil || req.SOAP < 0 || req.REST < 0 {
			return bad("soap and rest are seconds >= 0")
		}
		s.auth.setLatency("soap", req.SOAP)
		s.auth.setLatency("rest", req.REST)
		return http.StatusOK, nil
	}
	return notFound(r.Method + " " + r.URL.Path)
}
