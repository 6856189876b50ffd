package main

// Tasks that take their time: CancelTask (the simulator has none), a reconfigure whose task
// never ends until it is cancelled (or cancelling it is refused or ignored), and
// summary.config.tpmPresent kept true to the device list.

import (
	"net/http"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Cancel modes of a never-ending reconfigure task.
const (
	cancelAllow  = "allow"  // CancelTask ends it: error RequestCanceled, the VM unchanged
	cancelRefuse = "refuse" // info.cancelable false; CancelTask answers NotSupported; it runs on
	cancelIgnore = "ignore" // CancelTask is accepted (info.cancelled true) but it runs on
)

func validCancelMode(m string) bool {
	return m == cancelAllow || m == cancelRefuse || m == cancelIgnore
}

// setHangReconfigure makes the next ReconfigVM_Task on vm produce a task that never ends.
func (s *state) setHangReconfigure(vm types.ManagedObjectReference, mode string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hangNext[vm] = mode
}

func (s *state) takeHang(vm types.ManagedObjectReference) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	mode, ok := s.hangNext[vm]
	delete(s.hangNext, vm)
	return mode, ok
}

// hungReconfigure answers ReconfigVM_Task with a running task that never applies the spec.
func (s *state) hungReconfigure(w http.ResponseWriter, vm *simulator.VirtualMachine, mode string) {
	ref := startTaskOn(vm)
	task := simulator.Map.Get(ref).(*simulator.Task)
	simulator.Map.WithLock(task, func() {
		task.Info.Cancelable = mode != cancelRefuse
	})
	s.mu.Lock()
	s.hungTasks[ref] = mode
	s.mu.Unlock()
	writeResult(w, "ReconfigVM_Task", &types.ReconfigVM_TaskResponse{Returnval: ref})
}

// cancelTask implements Task.CancelTask: a running task ends in error RequestCanceled and
// leaves its entity's recentTask; a finished one gives InvalidState.
func (s *state) cancelTask(w http.ResponseWriter, c *soapCall) bool {
	task, ok := simulator.Map.Get(c.this).(*simulator.Task)
	if !ok {
		return false // the simulator answers ManagedObjectNotFound
	}
	var st types.TaskInfoState
	simulator.Map.WithLock(task, func() { st = task.Info.State })
	if st == types.TaskInfoStateSuccess || st == types.TaskInfoStateError {
		writeFault(w, &types.InvalidState{}, "The task has already completed.")
		return true
	}
	s.mu.Lock()
	mode, hung := s.hungTasks[c.this]
	s.mu.Unlock()
	switch {
	case hung && mode == cancelRefuse:
		writeFault(w, &types.NotSupported{}, "The task cannot be cancelled.")
		return true
	case hung && mode == cancelIgnore:
		simulator.Map.WithLock(task, func() {
			simulator.Map.Update(task, []types.PropertyChange{{Name: "info.cancelled", Val: true}})
		})
	default:
		endTask(c.this, types.TaskInfoStateError, &types.LocalizedMethodFault{
			Fault: &types.RequestCanceled{}, LocalizedMessage: "The task was canceled by a user.",
		})
	}
	writeResult(w, "CancelTask", &emptyResult{})
	return true
}

// endTask finishes a task with state (and fault) and drops it from its VM's recentTask.
func endTask(ref types.ManagedObjectReference, state types.TaskInfoState, fault *types.LocalizedMethodFault) {
	task, ok := simulator.Map.Get(ref).(*simulator.Task)
	if !ok {
		return
	}
	var entity *types.ManagedObjectReference
	simulator.Map.WithLock(task, func() {
		entity = task.Info.Entity
		change := []types.PropertyChange{
			{Name: "info.completeTime", Val: time.Now()},
			{Name: "info.state", Val: state},
		}
		if fault != nil {
			change = append(change, types.PropertyChange{Name: "info.cancelled", Val: true},
				types.PropertyChange{Name: "info.error", Val: fault})
		} else {
			change = append(change, types.PropertyChange{Name: "info.progress", Val: int32(100)})
		}
		simulator.Map.Update(task, change)
	})
	if entity != nil {
		dropRecentTask(*entity, ref)
	}
}

func dropRecentTask(entity, task types.ManagedObjectReference) {
	vm, ok := simulator.Map.Get(entity).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	simulator.Map.WithLock(vm, func() {
		var recent []types.ManagedObjectReference
		for _, t := range vm.RecentTask {
			if t != task {
				recent = append(recent, t)
			}
		}
		vm.RecentTask = recent
		simulator.Map.Update(vm, []types.PropertyChange{{Name: "recentTask", Val: recent}})
	})
}

// --- summary.config.tpmPresent ---

// refreshTPMPresent sets summary.config.tpmPresent from the VM's devices and tells watchers.
func refreshTPMPresent(vm *simulator.VirtualMachine) {
	simulator.Map.WithLock(vm, func() {
		present := false
		if vm.Config != nil {
			for _, d := range vm.Config.Hardware.Device {
				if _, ok := d.(*types.VirtualTPM); ok {
					present = true
				}
			}
		}
		vm.Summary.Config.TpmPresent = types.NewBool(present)
	})
	notifyChanged(vm, "summary.config.tpmPresent")
}

// notifyChanged tells the watch hub that properties changed which the simulator changed
// without publishing (its reconfigure sets the device list in place). Only names are passed:
// the hub re-reads values itself.
func notifyChanged(obj mo.Reference, names ...string) {
	list := make([]types.PropertyChange, len(names))
	for i, n := range names {
		list[i] = types.PropertyChange{Name: n, Op: types.PropertyChangeOpAssign}
	}
	changes.UpdateObject(obj, list)
}

// createVM delegates CreateVM_Task/CloneVM_Task and fills tpmPresent of the VM it made.
func (s *state) createVM(w http.ResponseWriter, r *http.Request, c *soapCall) bool {
	rec := s.ep.handler.(*interceptor).delegateRecorded(r, c.body)
	if ref, err := taskRef(rec.Body.Bytes()); err == nil && taskSucceeded(ref) {
		task := simulator.Map.Get(ref).(*simulator.Task)
		var result types.AnyType
		simulator.Map.WithLock(task, func() { result = task.Info.Result })
		made, ok := result.(types.ManagedObjectReference)
		if p, isPtr := result.(*types.ManagedObjectReference); isPtr && p != nil {
			made, ok = *p, true
		}
		if vm, isVM := simulator.Map.Get(made).(*simulator.VirtualMachine); ok && isVM {
			refreshTPMPresent(vm)
		}
	}
	forward(w, rec, rec.Body.Bytes())
	return true
}

func (s *state) initTPMPresent() {
	for _, e := range simulator.Map.All("VirtualMachine") {
		if vm, ok := e.(*simulator.VirtualMachine); ok {
			refreshTPMPresent(vm)
		}
	}
}
