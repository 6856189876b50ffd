package main

// vTPM rules of vCenter in ReconfigVM_Task, guest tools checks, and "a task is running on
// this VM". The simulator accepts any vTPM change and keeps partial changes of a failed
// reconfigure, so every rule is checked here BEFORE delegating: a refused reconfigure never
// reaches the simulator and the VM stays exactly as it was. Refusals surface as the task's
// error (info.state == error), as on vCenter; missing privileges are a direct NoPermission
// fault because vCenter checks privileges before it creates the task.

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// Privileges vCenter's documentation lists for adding a vTPM to an existing VM.
var vtpmAddPrivileges = []string{"Cryptographer.Encrypt", "VirtualMachine.Config.AddRemoveDevice"}

type vmSnapshot struct {
	power    types.VirtualMachinePowerState
	firmware string
	version  string
	snapshot bool
	hasTPM   bool
}

func readVM(vm *simulator.VirtualMachine) vmSnapshot {
	var v vmSnapshot
	simulator.Map.WithLock(vm, func() {
		v.power = vm.Runtime.PowerState
		v.snapshot = vm.Snapshot != nil || len(vm.RootSnapshot) > 0
		if vm.Config != nil {
			v.firmware = vm.Config.Firmware
			v.version = vm.Config.Version
			for _, d := range vm.Config.Hardware.Device {
				if _, ok := d.(*types.VirtualTPM); ok {
					v.hasTPM = true
				}
			}
		}
	})
	return v
}

func hwVersion(v string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(v, "vmx-"))
	if err != nil {
		return 0
	}
	return n
}

func msgFault(key, msg string) []types.LocalizableMessage {
	return []types.LocalizableMessage{{Key: key, Message: msg}}
}

func (s *state) reconfigVM(w http.ResponseWriter, r *http.Request, c *soapCall) bool {
	req, err := decodeVim(c.body)
	rc, ok := req.(*types.ReconfigVM_Task)
	if err != nil || !ok {
		return false
	}
	vm, ok := simulator.Map.Get(rc.This).(*simulator.VirtualMachine)
	if !ok {
		return false
	}
	if mode, hang := s.takeHang(vm.Self); hang {
		s.hungReconfigure(w, vm, mode)
		return true
	}
	add, remove := false, false
	addIndex := int32(0)
	for i, dc := range rc.Spec.DeviceChange {
		spec := dc.GetVirtualDeviceConfigSpec()
		if _, isTPM := spec.Device.(*types.VirtualTPM); !isTPM {
			continue
		}
		switch spec.Operation {
		case types.VirtualDeviceConfigSpecOperationAdd:
			add, addIndex = true, int32(i)
		case types.VirtualDeviceConfigSpecOperationRemove:
			remove = true
		}
	}
	if !add && !remove {
		s.delegateReconfigure(w, r, c, vm, nil)
		return true
	}

	if add {
		user := sessionUser(c.session)
		for _, priv := range vtpmAddPrivileges {
			if !s.hasPriv(user, rc.This, priv) {
				writeFault(w, &types.NoPermission{Object: rc.This, PrivilegeId: priv},
					"Permission to perform this operation was denied.")
				return true
			}
		}
	}

	vs := readVM(vm)
	// A spec may change firmware/version together with the add: judge the resulting config.
	if rc.Spec.Firmware != "" {
		vs.firmware = rc.Spec.Firmware
	}
	if rc.Spec.Version != "" {
		vs.version = rc.Spec.Version
	}
	providerID := ""
	var fault types.BaseMethodFault
	if add {
		fault, providerID = s.vtpmAddFault(vs, rc, addIndex)
	} else if vs.power != types.VirtualMachinePowerStatePoweredOff {
		fault = powerFault(vs.power, "msg.vtpm.remove.poweredOn")
	}
	if fault != nil {
		task := simulator.CreateTask(vm, "reconfigVm", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
			return nil, fault
		})
		writeResult(w, c.name, &types.ReconfigVM_TaskResponse{Returnval: task.Run()})
		return true
	}

	var key *types.CryptoKeyId
	if add {
		key = &types.CryptoKeyId{KeyId: uuid.New().String(), ProviderId: &types.KeyProviderId{Id: providerID}}
	}
	s.delegateReconfigure(w, r, c, vm, func() {
		simulator.Map.WithLock(vm, func() {
			var val types.AnyType
			if key != nil {
				val = key
			}
			vm.Config.KeyId = key
			simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.keyId", Val: val}})
		})
	})
	return true
}

// delegateReconfigure lets the simulator reconfigure; once its task succeeded it runs
// onSuccess, refreshes tpmPresent and tells watchers that config changed (the simulator
// changes devices, firmware, ... in place without publishing them).
func (s *state) delegateReconfigure(w http.ResponseWriter, r *http.Request, c *soapCall,
	vm *simulator.VirtualMachine, onSuccess func()) {
	rec := s.ep.handler.(*interceptor).delegateRecorded(r, c.body)
	if ref, err := taskRef(rec.Body.Bytes()); err == nil && taskSucceeded(ref) {
		if onSuccess != nil {
			onSuccess()
		}
		refreshTPMPresent(vm)
		notifyChanged(vm, "config", "summary.config")
	}
	forward(w, rec, rec.Body.Bytes())
}

func taskSucceeded(ref types.ManagedObjectReference) bool {
	task, ok := simulator.Map.Get(ref).(*simulator.Task)
	if !ok {
		return false
	}
	var st types.TaskInfoState
	simulator.Map.WithLock(task, func() { st = task.Info.State })
	return st == types.TaskInfoStateSuccess
}

func powerFault(existing types.VirtualMachinePowerState, key string) types.BaseMethodFault {
	f := &types.InvalidPowerState{
		RequestedState: types.VirtualMachinePowerStatePoweredOff,
		ExistingState:  existing,
	}
	f.FaultMessage = msgFault(key, "The virtual machine must be powered off to change its virtual TPM.")
	return f
}

// vtpmAddFault returns vCenter's fault for an invalid vTPM add (nil if allowed) and the key
// provider the add would use. Order follows the checks a user fixes first.
func (s *state) vtpmAddFault(vs vmSnapshot, rc *types.ReconfigVM_Task, index int32) (types.BaseMethodFault, string) {
	if vs.power != types.VirtualMachinePowerStatePoweredOff {
		return powerFault(vs.power, "msg.vtpm.add.poweredOn"), ""
	}
	if vs.hasTPM {
		f := &types.InvalidDeviceOperation{BadOp: types.VirtualDeviceConfigSpecOperationAdd}
		f.DeviceIndex = index
		f.Property = "virtualDeviceSpec.device"
		f.FaultMessage = msgFault("msg.vtpm.add.alreadyPresent", "The virtual machine already has a virtual TPM device.")
		return f, ""
	}
	if vs.firmware != string(types.GuestOsDescriptorFirmwareTypeEfi) {
		f := &types.InvalidDeviceSpec{DeviceIndex: index}
		f.Property = "virtualDeviceSpec.device"
		f.FaultMessage = msgFault("msg.vtpm.add.firmwareNotEfi", "A virtual TPM device requires EFI firmware.")
		return f, ""
	}
	if hwVersion(vs.version) < 14 {
		f := &types.DeviceUnsupportedForVmVersion{CurrentVersion: vs.version, ExpectedVersion: "vmx-14"}
		f.DeviceIndex = index
		f.Property = "virtualDeviceSpec.device"
		f.FaultMessage = msgFault("msg.vtpm.add.hwVersion",
			"A virtual TPM device requires virtual hardware version 14 or later.")
		return f, ""
	}
	if vs.snapshot {
		f := &types.InvalidVmConfig{Property: "configSpec.crypto"}
		f.FaultMessage = msgFault("msg.hostd.configSpec.enc.snapshots",
			"Cannot change encryption state with virtual machine snapshots present.")
		return f, ""
	}

	named := ""
	if enc, ok := rc.Spec.Crypto.(*types.CryptoSpecEncrypt); ok && enc.CryptoKeyId.ProviderId != nil {
		named = enc.CryptoKeyId.ProviderId.Id
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var p *provider
	if named != "" {
		p = s.findProvider(named)
	} else {
		p = s.defaultProvider()
	}
	if p == nil || !p.usable() {
		reason := "no default key provider"
		if named != "" {
			reason = fmt.Sprintf("key provider %q", named)
			if p == nil {
				reason += " does not exist"
			}
		}
		if p != nil {
			reason += " is not usable (a native key provider must be backed up)"
		}
		f := &types.GenericVmConfigFault{Reason: "Cannot add a virtual TPM: " + reason}
		f.FaultMessage = msgFault("msg.vtpm.add.notEncrypted",
			"Virtual TPM device cannot be added: the virtual machine cannot be encrypted ("+reason+").")
		return f, ""
	}
	return nil, p.ID
}

// guestOp refuses guest operations when VMware Tools are not running (ToolsUnavailable).
func (s *state) guestOp(w http.ResponseWriter, c *soapCall) bool {
	vm, ok := simulator.Map.Get(c.this).(*simulator.VirtualMachine)
	if !ok {
		return false
	}
	var power types.VirtualMachinePowerState
	tools := ""
	simulator.Map.WithLock(vm, func() {
		power = vm.Runtime.PowerState
		if vm.Guest != nil {
			tools = vm.Guest.ToolsRunningStatus
		}
	})
	if power == types.VirtualMachinePowerStatePoweredOn &&
		tools != string(types.VirtualMachineToolsRunningStatusGuestToolsRunning) {
		f := &types.ToolsUnavailable{}
		f.FaultMessage = msgFault("msg.vmx.tools.notRunning", "VMware Tools is not running in the guest.")
		writeFault(w, f, "Cannot complete operation because VMware Tools is not running in this virtual machine.")
		return true
	}
	if c.name == "ShutdownGuest" && power == types.VirtualMachinePowerStatePoweredOn {
		return s.delayedShutdown(w, c, vm)
	}
	return false
}

// setToolsRunning flips guest.toolsRunningStatus (and toolsStatus) of a VM.
func setToolsRunning(vm *simulator.VirtualMachine, running bool) {
	status := types.VirtualMachineToolsRunningStatusGuestToolsNotRunning
	toolsStatus := types.VirtualMachineToolsStatusToolsNotRunning
	if running {
		status = types.VirtualMachineToolsRunningStatusGuestToolsRunning
		toolsStatus = types.VirtualMachineToolsStatusToolsOk
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Guest == nil {
			vm.Guest = &types.GuestInfo{}
		}
		vm.Guest.ToolsRunningStatus = string(status)
		vm.Guest.ToolsStatus = toolsStatus
		if vm.Summary.Guest != nil {
			vm.Summary.Guest.ToolsRunningStatus = string(status)
			vm.Summary.Guest.ToolsStatus = toolsStatus
		}
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "guest.toolsRunningStatus", Val: string(status)},
			{Name: "guest.toolsStatus", Val: toolsStatus},
		})
	})
}

// startTaskOn creates a running task on a VM, listed in its recentTask, as when another
// client is reconfiguring it.
func startTaskOn(vm *simulator.VirtualMachine) types.ManagedObjectReference {
	task := simulator.CreateTask(vm, "reconfigVm", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, nil
	})
	now := time.Now()
	simulator.Map.WithLock(task, func() {
		simulator.Map.Update(task, []types.PropertyChange{
			{Name: "info.startTime", Val: now},
			{Name: "info.state", Val: types.TaskInfoStateRunning},
			{Name: "info.progress", Val: int32(50)},
		})
	})
	simulator.Map.WithLock(vm, func() {
		recent := append(append([]types.ManagedObjectReference{}, vm.RecentTask...), task.Self)
		vm.RecentTask = recent
		simulator.Map.Update(vm, []types.PropertyChange{{Name: "recentTask", Val: recent}})
	})
	return task.Self
}

// finishTask completes a task created by startTaskOn and drops it from the VM's recentTask.
func finishTask(ref types.ManagedObjectReference) error {
	task, ok := simulator.Map.Get(ref).(*simulator.Task)
	if !ok {
		return fmt.Errorf("task %s not found", ref.Value)
	}
	var entity *types.ManagedObjectReference
	now := time.Now()
	simulator.Map.WithLock(task, func() {
		entity = task.Info.Entity
		simulator.Map.Update(task, []types.PropertyChange{
			{Name: "info.completeTime", Val: now},
			{Name: "info.state", Val: types.TaskInfoStateSuccess},
			{Name: "info.progress", Val: int32(100)},
		})
	})
	if entity == nil {
		return nil
	}
	if vm, ok := simulator.Map.Get(*entity).(*simulator.VirtualMachine); ok {
		simulator.Map.WithLock(vm, func() {
			var recent []types.ManagedObjectReference
			for _, t := range vm.RecentTask {
				if t != ref {
					recent = append(recent, t)
				}
			}
			vm.RecentTask = recent
			simulator.Map.Update(vm, []types.PropertyChange{{Name: "recentTask", Val: recent}})
		})
	}
	return nil
}
