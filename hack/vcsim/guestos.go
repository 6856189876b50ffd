package main

// Guest OS descriptors for EnvironmentBrowser.QueryConfigOptionEx, with a truthful
// supportsTPM20. The simulator's own reply embeds its whole default device list and zero-value
// option structs that pyvmomi 9.1.1.0 cannot decode (see README.md), and it never sets
// supportsTPM20; this launcher answers the method itself with a compact, decodable option.
// The table below is the single place that decides which guest ids support TPM 2.0.

import (
	"net/http"
	"sort"
	"strings"

	"github.com/vmware/govmomi/vim25/types"
)

type guestOS struct {
	family   types.VirtualMachineGuestOsFamily
	fullName string
	tpm20    bool
	efi      bool // supports EFI firmware
}

const (
	win   = types.VirtualMachineGuestOsFamilyWindowsGuest
	linux = types.VirtualMachineGuestOsFamilyLinuxGuest
	other = types.VirtualMachineGuestOsFamilyOtherGuestFamily
)

// guestTable: TPM 2.0 support as vSphere 7.0 U2+/8.0 reports it (64-bit Windows 8/2012 and
// later, current 64-bit Linux distributions; no 32-bit or legacy guests).
var guestTable = map[string]guestOS{
	"windows9_64Guest":           {win, "Microsoft Windows 10 (64-bit)", true, true},
	"windows11_64Guest":          {win, "Microsoft Windows 11 (64-bit)", true, true},
	"windows2019srv_64Guest":     {win, "Microsoft Windows Server 2019 (64-bit)", true, true},
	"windows2019srvNext_64Guest": {win, "Microsoft Windows Server 2022 (64-bit)", true, true},
	"windows2022srvNext_64Guest": {win, "Microsoft Windows Server 2025 (64-bit)", true, true},
	"windows9Server64Guest":      {win, "Microsoft Windows Server 2016 (64-bit)", true, true},
	"windows8_64Guest":           {win, "Microsoft Windows 8.x (64-bit)", true, true},
	"windows8Server64Guest":      {win, "Microsoft Windows Server 2012 (64-bit)", true, true},
	"windows9Guest":              {win, "Microsoft Windows 10 (32-bit)", false, true},
	"windows7_64Guest":           {win, "Microsoft Windows 7 (64-bit)", false, true},
	"windows7Guest":              {win, "Microsoft Windows 7 (32-bit)", false, false},
	"winXPProGuest":              {win, "Microsoft Windows XP Professional (32-bit)", false, false},
	"winXPPro64Guest":            {win, "Microsoft Windows XP Professional (64-bit)", false, false},
	"win2000ProGuest":            {win, "Microsoft Windows 2000 Professional", false, false},
	"rhel9_64Guest":              {linux, "Red Hat Enterprise Linux 9 (64-bit)", true, true},
	"rhel8_64Guest":              {linux, "Red Hat Enterprise Linux 8 (64-bit)", true, true},
	"rhel7_64Guest":              {linux, "Red Hat Enterprise Linux 7 (64-bit)", false, true},
	"rhel6_64Guest":              {linux, "Red Hat Enterprise Linux 6 (64-bit)", false, false},
	"rhel6Guest":                 {linux, "Red Hat Enterprise Linux 6 (32-bit)", false, false},
	"centos8_64Guest":            {linux, "CentOS 8 (64-bit)", true, true},
	"centos7_64Guest":            {linux, "CentOS 7 (64-bit)", false, true},
	"sles15_64Guest":             {linux, "SUSE Linux Enterprise 15 (64-bit)", true, true},
	"sles12_64Guest":             {linux, "SUSE Linux Enterprise 12 (64-bit)", false, true},
	"ubuntu64Guest":              {linux, "Ubuntu Linux (64-bit)", true, true},
	"ubuntuGuest":                {linux, "Ubuntu Linux (32-bit)", false, false},
	"debian11_64Guest":           {linux, "Debian GNU/Linux 11 (64-bit)", true, true},
	"other5xLinux64Guest":        {linux, "Other 5.x or later Linux (64-bit)", true, true},
	"other4xLinux64Guest":        {linux, "Other 4.x Linux (64-bit)", true, true},
	"other3xLinux64Guest":        {linux, "Other 3.x Linux (64-bit)", false, true},
	"otherLinux64Guest":          {linux, "Other Linux (64-bit)", false, true},
	"otherLinuxGuest":            {linux, "Other Linux (32-bit)", false, false},
	"otherGuest64":               {other, "Other (64-bit)", false, true},
	"otherGuest":                 {other, "Other (32-bit)", false, false},
	"dosGuest":                   {other, "MS-DOS", false, false},
}

type configOptionArgs struct {
	Spec struct {
		Key     string   `xml:"key"`
		GuestID []string `xml:"guestId"`
	} `xml:"spec"`
}

func descriptor(id string, g guestOS) types.GuestOsDescriptor {
	tpm := g.tpm20
	firmware := []string{string(types.GuestOsDescriptorFirmwareTypeBios)}
	recommended := string(types.GuestOsDescriptorFirmwareTypeBios)
	if g.efi {
		firmware = append(firmware, string(types.GuestOsDescriptorFirmwareTypeEfi))
		recommended = string(types.GuestOsDescriptorFirmwareTypeEfi)
	}
	controller := "VirtualLsiLogicSASController"
	if g.family == linux {
		controller = "ParaVirtualSCSIController"
	}
	return types.GuestOsDescriptor{
		Id:                          id,
		Family:                      string(g.family),
		FullName:                    g.fullName,
		SupportedMaxCPUs:            768,
		SupportedMinMemMB:           4,
		SupportedMaxMemMB:           25165824,
		RecommendedMemMB:            4096,
		RecommendedColorDepth:       32,
		SupportedDiskControllerList: []string{controller, "VirtualAHCIController", "VirtualNVMEController"},
		RecommendedSCSIController:   controller,
		RecommendedDiskController:   controller,
		SupportedNumDisks:           0,
		RecommendedDiskSizeMB:       40960,
		RecommendedCdromController:  "VirtualAHCIController",
		SupportedEthernetCard:       []string{"VirtualVmxnet3", "VirtualE1000e"},
		RecommendedEthernetCard:     "VirtualVmxnet3",
		SupportedFirmware:           firmware,
		RecommendedFirmware:         recommended,
		SupportsTPM20:               &tpm,
		SupportLevel:                "supported",
	}
}

// queryConfigOptionEx: "If guestId is nonempty, the guestOSDescriptor array of the config
// option is filtered to match against the guest IDs in the spec. If there is no match, the
// whole list is returned." (vSphere API reference)
func (s *state) queryConfigOptionEx(w http.ResponseWriter, c *soapCall) bool {
	var args configOptionArgs
	if err := decodeArgs(c.body, c.name, &args); err != nil {
		return false
	}
	version := args.Spec.Key
	if version == "" {
		version = "vmx-19"
	}
	opt := &types.VirtualMachineConfigOption{
		Version:              version,
		Description:          "Hardware version " + strings.TrimPrefix(version, "vmx-"),
		SupportedMonitorType: []string{"release"},
	}
	opt.HardwareOptions.HwVersion = int32(hwVersion(version))
	for _, id := range args.Spec.GuestID {
		if g, ok := guestTable[id]; ok {
			opt.GuestOSDescriptor = append(opt.GuestOSDescriptor, descriptor(id, g))
		}
	}
	if len(opt.GuestOSDescriptor) == 0 {
		ids := make([]string, 0, len(guestTable))
		for id := range guestTable {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			opt.GuestOSDescriptor = append(opt.GuestOSDescriptor, descriptor(id, guestTable[id]))
		}
	}
	writeResult(w, c.name, &types.QueryConfigOptionExResponse{Returnval: opt})
	return true
}
