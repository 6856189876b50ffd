package main

// Users, roles and permissions. The simulator's HasPrivilegeOnEntity grants everything and
// its privilege list has no Cryptographer.*; the operator must be able to detect a missing
// Cryptographer.Encrypt on one folder. Permissions resolve like vCenter: the nearest
// permission for the user up the entity's parent chain wins (a non-propagating permission
// applies only to its own entity).

import (
	"net/http"
	"sort"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

var cryptographerPrivileges = []string{
	"Encrypt", "EncryptNew", "Decrypt", "Clone", "Migrate", "RegisterVM", "RegisterHost",
	"ManageKeys", "ManageKeyServers", "ManageEncryptionPolicy", "Recrypt", "AddDisk",
	"ReadKeyServersInfo", "Access",
}

// allPrivileges is the Admin role: every privilege the simulator knows plus Cryptographer.*.
var allPrivileges []string

func (s *state) initAuthz() {
	am, ok := simulator.Map.Get(*serviceContent().AuthorizationManager).(*simulator.AuthorizationManager)
	if !ok {
		return
	}
	simulator.Map.WithLock(am, func() {
		// The simulator's privilegeList is partial: build it from every role plus Cryptographer.*.
		set := map[string]bool{}
		for _, p := range am.PrivilegeList {
			set[p.PrivId] = true
		}
		want := map[string]bool{}
		for _, r := range am.RoleList {
			for _, p := range r.Privilege {
				want[p] = true
			}
		}
		for _, p := range cryptographerPrivileges {
			want["Cryptographer."+p] = true
		}
		var missing []string
		for p := range want {
			if !set[p] {
				missing = append(missing, p)
			}
		}
		sort.Strings(missing)
		for _, id := range missing {
			dot := strings.LastIndex(id, ".")
			am.PrivilegeList = append(am.PrivilegeList, types.AuthorizationPrivilege{
				PrivId: id, Name: id[dot+1:], PrivGroupName: id[:dot],
			})
		}
		for _, p := range am.PrivilegeList {
			allPrivileges = append(allPrivileges, p.PrivId)
		}
		sort.Strings(allPrivileges)
		for i := range am.RoleList {
			if am.RoleList[i].Name == "Admin" {
				am.RoleList[i].Privilege = append([]string{}, allPrivileges...)
			}
		}
	})
	admin := map[string]bool{}
	for _, p := range allPrivileges {
		admin[p] = true
	}
	s.roles["Admin"] = admin
	s.roles["ReadOnly"] = map[string]bool{"System.Anonymous": true, "System.View": true, "System.Read": true}
	s.roles["NoAccess"] = map[string]bool{}
}

func (s *state) createRole(name string, privileges []string) {
	set := map[string]bool{"System.Anonymous": true, "System.View": true, "System.Read": true}
	for _, p := range privileges {
		set[p] = true
	}
	s.mu.Lock()
	s.roles[name] = set
	s.mu.Unlock()
}

func (s *state) setPermission(p permission, kind string) error {
	ref := moref(kind, p.Entity)
	if entity(ref) == nil {
		return errNotFound("entity " + p.Entity)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.roles[p.Role]; !ok {
		return errNotFound("role " + p.Role)
	}
	list := s.perms[ref][:0:0]
	for _, o := range s.perms[ref] {
		if o.Principal != p.Principal {
			list = append(list, o)
		}
	}
	s.perms[ref] = append(list, p)
	return nil
}

// privileges returns the privileges user holds on ref.
func (s *state) privileges(user string, ref types.ManagedObjectReference) map[string]bool {
	if user == "" {
		return nil
	}
	// Walk up the inventory first (takes object locks), then read our tables under s.mu.
	chain := []types.ManagedObjectReference{ref}
	for cur := ref; ; {
		e := entity(cur)
		if e == nil {
			break
		}
		var parent *types.ManagedObjectReference
		simulator.Map.WithLock(e, func() { parent = e.Entity().Parent })
		if parent == nil {
			break
		}
		chain = append(chain, *parent)
		cur = *parent
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range chain {
		for _, p := range s.perms[r] {
			if p.Principal != user || (i > 0 && !p.Propagate) {
				continue
			}
			return s.roles[p.Role]
		}
	}
	return nil
}

func (s *state) hasPriv(user string, ref types.ManagedObjectReference, priv string) bool {
	return s.privileges(user, ref)[priv]
}

// hasPrivilege answers HasPrivilegeOnEntity/HasPrivilegeOnEntities for the user of the
// session named in the request (not necessarily the caller's).
func (s *state) hasPrivilege(w http.ResponseWriter, c *soapCall) bool {
	req, err := decodeVim(c.body)
	if err != nil {
		return false
	}
	switch r := req.(type) {
	case *types.HasPrivilegeOnEntity:
		user := sessionUser(r.SessionId)
		privs := s.privileges(user, r.Entity)
		res := &boolList{}
		for _, id := range r.PrivId {
			res.Returnval = append(res.Returnval, privs[id])
		}
		writeResult(w, c.name, res)
		return true
	case *types.HasPrivilegeOnEntities:
		user := sessionUser(r.SessionId)
		res := &types.HasPrivilegeOnEntitiesResponse{}
		for _, e := range r.Entity {
			privs := s.privileges(user, e)
			ep := types.EntityPrivilege{Entity: e}
			for _, id := range r.PrivId {
				ep.PrivAvailability = append(ep.PrivAvailability, types.PrivilegeAvailability{PrivId: id, IsGranted: privs[id]})
			}
			res.Returnval = append(res.Returnval, ep)
		}
		writeResult(w, c.name, res)
		return true
	}
	return false
}

func (s *state) roleNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for n := range s.roles {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// boolList replaces types.HasPrivilegeOnEntityResponse: govmomi's encoder applies its
// `omitempty` to each slice element, silently dropping every false answer.
type boolList struct {
	Returnval []bool `xml:"returnval"`
}

type errNotFound string

func (e errNotFound) Error() string { return string(e) + " not found" }
