package main

import (
	"net/http"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// A guest that takes its time: with a shutdown delay set for a VM, ShutdownGuest is accepted at
// once and the VM powers off that many seconds later, as a real guest OS does (the simulator
// powers off on the spot). Tests use it to watch how many VMs the operator has in flight.

func (s *state) setShutdownDelay(vm types.ManagedObjectReference, seconds float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutdownDelays[vm] = seconds
}

// delayedShutdown answers ShutdownGuest itself when the VM has a delay; false means "delegate".
func (s *state) delayedShutdown(w http.ResponseWriter, c *soapCall, vm *simulator.VirtualMachine) bool {
	s.mu.Lock()
	seconds := s.shutdownDelays[c.this]
	s.mu.Unlock()
	if seconds <= 0 {
		return false
	}
	time.AfterFunc(time.Duration(seconds*float64(time.Second)), func() { powerOffNow(vm) })
	writeResult(w, "ShutdownGuest", struct{}{})
	return true
}

func powerOffNow(vm *simulator.VirtualMachine) {
	off := types.VirtualMachinePowerStatePoweredOff
	simulator.Map.WithLock(vm, func() {
		if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
			return
		}
		vm.Runtime.PowerState = off
		vm.Summary.Runtime.PowerState = off
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "runtime.powerState", Val: off},
			{Name: "summary.runtime.powerState", Val: off},
		})
	})
}
