package main

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// govmomi 0.24.2 validates configSpec.guestId against the guest ids it knew in 2020; vCenter 8
// knows newer ones (Windows 11, Server 2019/2022, RHEL 8/9, ...) that fleets actually run.
var newerGuestIDs = []types.VirtualMachineGuestOsIdentifier{
	"windows11_64Guest", "windows2019srv_64Guest", "windows2019srvNext_64Guest", "windows2022srvNext_64Guest",
	"rhel8_64Guest", "rhel9_64Guest", "centos8_64Guest", "centos9_64Guest", "sles15_64Guest",
	"debian11_64Guest", "debian12_64Guest", "other5xLinux64Guest", "other6xLinux64Guest",
	"amazonlinux3_64Guest", "rockylinux_64Guest", "almalinux_64Guest",
}

func init() {
	known := map[types.VirtualMachineGuestOsIdentifier]bool{}
	for _, id := range simulator.GuestID {
		known[id] = true
	}
	for _, id := range newerGuestIDs {
		if !known[id] {
			simulator.GuestID = append(simulator.GuestID, id)
		}
	}
}
