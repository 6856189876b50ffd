package main

// Key providers (content.cryptoManager, a CryptoManagerKmip). The simulator answers every
// CryptoManagerKmip method with a fault, and govmomi 0.24.2 has no types for the 7.0+ methods
// (GetDefaultKmsCluster, IsKmsClusterActive, ...) nor for KmipClusterInfo.hasBackup, so
// requests are decoded with encoding/xml and answered with our own structs. A Map object at
// the cryptoManager moref keeps `kmipServers` readable through the PropertyCollector; its
// replies get hasBackup spliced in (propertyCollector below).

import (
	"fmt"
	"net/http"
	"regexp"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

type cryptoObject struct {
	mo.CryptoManagerKmip
}

const (
	mgmtVCenter = "vCenter"        // standard KMIP key provider
	mgmtNative  = "nativeProvider" // vSphere Native Key Provider
)

// kmipClusterInfo is KmipClusterInfo with the 7.0.2+ fields govmomi 0.24.2 lacks.
type kmipClusterInfo struct {
	ClusterID      types.KeyProviderId    `xml:"clusterId"`
	Servers        []types.KmipServerInfo `xml:"servers,omitempty"`
	UseAsDefault   bool                   `xml:"useAsDefault"`
	ManagementType string                 `xml:"managementType,omitempty"`
	HasBackup      *bool                  `xml:"hasBackup,omitempty"`
	TpmRequired    *bool                  `xml:"tpmRequired,omitempty"`
}

type clusterListResult struct {
	Returnval []kmipClusterInfo `xml:"returnval,omitempty"`
}

type providerIDResult struct {
	Returnval *types.KeyProviderId `xml:"returnval,omitempty"`
}

type boolResult struct {
	Returnval bool `xml:"returnval"`
}

type idArg struct {
	ID string `xml:"id"`
}

type kmsArgs struct {
	ClusterID            *idArg `xml:"clusterId"`
	Cluster              *idArg `xml:"cluster"`
	ManagementType       string `xml:"managementType"`
	IncludeKmsServers    *bool  `xml:"includeKmsServers"`
	ManagementTypeFilter *int32 `xml:"managementTypeFilter"` // bitmask, see mgmtBit
}

func (s *state) initCrypto() {
	ref := serviceContent().CryptoManager
	obj := &cryptoObject{}
	obj.Self = *ref
	simulator.Map.Put(obj)
	s.crypto = obj
}

func (p *provider) mgmtType() string {
	if p.Type == "native" {
		return mgmtNative
	}
	return mgmtVCenter
}

// usable: a native provider only once backed up; a KMIP one once it has a server.
func (p *provider) usable() bool {
	if p.Type == "native" {
		return p.BackedUp
	}
	return p.Type == "kmip"
}

func (p *provider) info(withServers bool) kmipClusterInfo {
	i := kmipClusterInfo{
		ClusterID:      types.KeyProviderId{Id: p.ID},
		UseAsDefault:   p.Default,
		ManagementType: p.mgmtType(),
	}
	if p.Type == "native" {
		backup, tpm := p.BackedUp, false
		i.HasBackup, i.TpmRequired = &backup, &tpm
	} else if withServers && p.Type == "kmip" {
		i.Servers = []types.KmipServerInfo{{Name: p.ID + "-kms1", Address: "kms.invalid", Port: 5696}}
	}
	return i
}

// findProvider must be called with s.mu held.
func (s *state) findProvider(id string) *provider {
	for _, p := range s.providers {
		if p.ID == id {
			return p
		}
	}
	return nil
}

// defaultProvider must be called with s.mu held.
func (s *state) defaultProvider() *provider {
	for _, p := range s.providers {
		if p.Default {
			return p
		}
	}
	return nil
}

// syncCrypto mirrors the providers into the Map object read by the PropertyCollector.
// Must be called with s.mu held.
func (s *state) syncCrypto() {
	var infos []types.KmipClusterInfo
	for _, p := range s.providers {
		i := p.info(true)
		infos = append(infos, types.KmipClusterInfo{
			ClusterId: i.ClusterID, Servers: i.Servers, UseAsDefault: i.UseAsDefault, ManagementType: i.ManagementType,
		})
	}
	simulator.Map.WithLock(s.crypto, func() {
		s.crypto.KmipServers = infos
		simulator.Map.Update(s.crypto, []types.PropertyChange{{Name: "kmipServers", Val: infos}})
	})
}

// addProvider registers a provider; kind is "kmip" or "native".
func (s *state) addProvider(p provider) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.Type != "kmip" && p.Type != "native" && p.Type != "registered" {
		return fmt.Errorf("type must be kmip or native, not %q", p.Type)
	}
	if p.ID == "" || s.findProvider(p.ID) != nil {
		return fmt.Errorf("provider id %q empty or already registered", p.ID)
	}
	if p.Default {
		for _, o := range s.providers {
			o.Default = false
		}
	}
	cp := p
	s.providers = append(s.providers, &cp)
	s.syncCrypto()
	return nil
}

func (s *state) removeProvider(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, p := range s.providers {
		if p.ID == id {
			s.providers = append(s.providers[:i], s.providers[i+1:]...)
			s.syncCrypto()
			return true
		}
	}
	return false
}

func (s *state) markBackedUp(id string, backedUp bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.findProvider(id)
	if p == nil {
		return false
	}
	p.BackedUp = backedUp
	s.syncCrypto()
	return true
}

func invalidArg(prop string) types.BaseMethodFault {
	return &types.InvalidArgument{InvalidProperty: prop}
}

// handleCrypto answers the CryptoManagerKmip methods.
func (s *state) handleCrypto(w http.ResponseWriter, c *soapCall) bool {
	var args kmsArgs
	switch c.name {
	case "ListKmipServers", "ListKmsClusters", "GetDefaultKmsCluster", "RegisterKmsCluster",
		"UnregisterKmsCluster", "MarkDefault", "SetDefaultKmsCluster", "IsKmsClusterActive":
		if err := decodeArgs(c.body, c.name, &args); err != nil {
			writeFault(w, &types.InvalidRequest{}, err.Error())
			return true
		}
	default:
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()

	switch c.name {
	case "ListKmipServers", "ListKmsClusters":
		withServers := c.name == "ListKmipServers" || (args.IncludeKmsServers != nil && *args.IncludeKmsServers)
		res := clusterListResult{}
		for _, p := range s.providers {
			if f := args.ManagementTypeFilter; f != nil && *f != 0 && *f&mgmtBit(p.mgmtType()) == 0 {
				continue
			}
			res.Returnval = append(res.Returnval, p.info(withServers))
		}
		writeResult(w, c.name, &res)
	case "GetDefaultKmsCluster":
		// Entity-level defaults are not modelled: the global default answers for every entity.
		res := providerIDResult{}
		if p := s.defaultProvider(); p != nil {
			res.Returnval = &types.KeyProviderId{Id: p.ID}
		}
		writeResult(w, c.name, &res)
	case "RegisterKmsCluster":
		if args.ClusterID == nil || args.ClusterID.ID == "" {
			writeFault(w, invalidArg("clusterId"), "clusterId is required")
			return true
		}
		if s.findProvider(args.ClusterID.ID) != nil {
			writeFault(w, &types.AlreadyExists{Name: args.ClusterID.ID}, "key provider already exists")
			return true
		}
		kind := "registered" // a KMIP cluster without servers: not active until servers are added
		if args.ManagementType == mgmtNative {
			kind = "native"
		}
		s.providers = append(s.providers, &provider{ID: args.ClusterID.ID, Type: kind})
		s.syncCrypto()
		writeResult(w, c.name, &emptyResult{})
	case "UnregisterKmsCluster", "MarkDefault", "SetDefaultKmsCluster", "IsKmsClusterActive":
		id := ""
		if args.ClusterID != nil {
			id = args.ClusterID.ID
		} else if args.Cluster != nil {
			id = args.Cluster.ID
		}
		if id == "" && c.name == "SetDefaultKmsCluster" { // no clusterId: clear the default
			for _, o := range s.providers {
				o.Default = false
			}
			s.syncCrypto()
			writeResult(w, c.name, &emptyResult{})
			return true
		}
		if id == "" && c.name == "IsKmsClusterActive" { // no cluster: the default one
			if d := s.defaultProvider(); d != nil {
				id = d.ID
			}
		}
		p := s.findProvider(id)
		if p == nil {
			writeFault(w, invalidArg("clusterId"), fmt.Sprintf("key provider %q not found", id))
			return true
		}
		switch c.name {
		case "UnregisterKmsCluster":
			for i, o := range s.providers {
				if o == p {
					s.providers = append(s.providers[:i], s.providers[i+1:]...)
					break
				}
			}
			s.syncCrypto()
			writeResult(w, c.name, &emptyResult{})
		case "MarkDefault", "SetDefaultKmsCluster":
			for _, o := range s.providers {
				o.Default = o == p
			}
			s.syncCrypto()
			writeResult(w, c.name, &emptyResult{})
		case "IsKmsClusterActive":
			writeResult(w, c.name, &boolResult{Returnval: p.usable()})
		}
	}
	return true
}

// mgmtBit: ListKmsClusters' managementTypeFilter is an int; we read it as a bitmask over
// KmipClusterInfoKmsManagementType in declaration order (unknown, vCenter, trustAuthority,
// nativeProvider -> 1, 2, 4, 8). Unverified against a real vCenter.
func mgmtBit(kind string) int32 {
	for i, k := range []string{"unknown", mgmtVCenter, "trustAuthority", mgmtNative} {
		if k == kind {
			return 1 << uint(i)
		}
	}
	return 0
}

var (
	kmipInfoRe  = regexp.MustCompile(`(?s)<KmipClusterInfo\b[^>]*>.*?</KmipClusterInfo>`)
	clusterIDRe = regexp.MustCompile(`<clusterId\b[^>]*>\s*<id\b[^>]*>([^<]*)</id>`)
)

// propertyCollector delegates and, when a reply carries kmipServers, adds hasBackup and
// tpmRequired to native providers (govmomi's KmipClusterInfo cannot carry them).
func (s *state) propertyCollector(w http.ResponseWriter, r *http.Request, c *soapCall) bool {
	rec := s.ep.handler.(*interceptor).delegateRecorded(r, c.body)
	body := rec.Body.Bytes()
	if kmipInfoRe.Match(body) {
		s.mu.Lock()
		body = kmipInfoRe.ReplaceAllFunc(body, func(block []byte) []byte {
			m := clusterIDRe.FindSubmatch(block)
			if m == nil {
				return block
			}
			p := s.findProvider(string(m[1]))
			if p == nil || p.Type != "native" {
				return block
			}
			end := len(block) - len("</KmipClusterInfo>")
			extra := fmt.Sprintf("<hasBackup>%t</hasBackup><tpmRequired>false</tpmRequired>", p.BackedUp)
			out := append([]byte{}, block[:end]...)
			out = append(out, extra...)
			return append(out, block[end:]...)
		})
		s.mu.Unlock()
	}
	forward(w, rec, body)
	return true
}

// providerList describes the registered providers (admin GET).
func (s *state) providerList() []map[string]interface{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []map[string]interface{}{}
	for _, p := range s.providers {
		out = append(out, map[string]interface{}{
			"id": p.ID, "type": p.Type, "default": p.Default, "backedUp": p.BackedUp, "usable": p.usable(),
		})
	}
	return out
}
