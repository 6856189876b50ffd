package main

// Per-host ESXi product version/build. The simulator gives every host the same template
// AboutInfo (shared pointers); vTPM support depends on the host's ESXi version (6.7 for
// Windows guests, 7.0 U2 = "7.0.2" for Linux guests), so each host gets its own copy.

import (
	"fmt"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	defaultESXiVersion = "8.0.2"
	defaultESXiBuild   = "22380479"
)

func (s *state) initHosts() {
	for _, e := range simulator.Map.All("HostSystem") {
		if h, ok := e.(*simulator.HostSystem); ok {
			setHostProduct(h, defaultESXiVersion, defaultESXiBuild)
		}
	}
	// Guest operations need running tools; model VMs start with tools running.
	for _, e := range simulator.Map.All("VirtualMachine") {
		if vm, ok := e.(*simulator.VirtualMachine); ok {
			setToolsRunning(vm, true)
		}
	}
}

func setHostProduct(h *simulator.HostSystem, version, build string) {
	simulator.Map.WithLock(h, func() {
		about := types.AboutInfo{}
		if h.Config != nil {
			cfg := *h.Config
			about = cfg.Product
			h.Config = &cfg
		}
		about.Name = "VMware ESXi"
		about.Vendor = "VMware, Inc."
		about.ProductLineId = "embeddedEsx"
		about.ApiType = "HostAgent"
		about.Version = version
		about.Build = build
		about.FullName = fmt.Sprintf("VMware ESXi %s build-%s", version, build)
		about.ApiVersion = apiVersionFor(version)
		if h.Config != nil {
			h.Config.Product = about
		}
		summary := about
		h.Summary.Config.Product = &summary
		simulator.Map.Update(h, []types.PropertyChange{
			{Name: "config.product", Val: about},
			{Name: "summary.config.product", Val: &summary},
		})
	})
}

// apiVersionFor maps an ESXi version to the API version it reports.
func apiVersionFor(version string) string {
	switch version {
	case "6.5.0":
		return "6.5"
	case "6.7.0":
		return "6.7"
	case "7.0.0", "7.0.1":
		return "7.0." + version[4:] + ".0"
	case "7.0.2":
		return "7.0.2.0"
	}
	return version + ".0"
}
