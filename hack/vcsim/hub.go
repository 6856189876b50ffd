package main

// Incremental watch state for collector.go. One hub is registered in the simulator's object
// map (its Put/Update/Remove hooks fire on every change of every object) and fans each change
// out to the live collectors' filters: a member object's touched filter paths are marked
// dirty, a change of a traversal path (ContainerView.view, Folder.childEntity, ...) or a new
// object of a watched type marks the filter's membership for recomputation. Nothing is read
// here: the hooks run while the simulator holds the changed object's lock, so they only
// record, under collectorState.mu, which is never held while an object lock is taken.

import (
	"context"
	"path"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

type collectorState struct {
	mu      sync.Mutex
	session string
	self    types.ManagedObjectReference
	wake    chan struct{}
	filters []*propertyFilter

	version  int
	lastFrom string           // the version the last answer was asked with
	last     *types.UpdateSet // resent when a client asks with lastFrom again (answer lost)

	retrievals map[string]*pendingRetrieval
	tokenSeq   int

	waits     map[*context.CancelFunc]struct{}
	cancelled map[*context.CancelFunc]bool
	expired   bool // its session is gone: waits in progress end with NotAuthenticated
}

func (st *collectorState) signal() {
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

// checkVersion accepts "" (start over: every filter is filled again), the current version, or
// the version of the last answer (returned again). Anything else is InvalidCollectorVersion.
func (st *collectorState) checkVersion(version string) (*types.UpdateSet, *soap.Fault) {
	st.mu.Lock()
	defer st.mu.Unlock()
	switch {
	case version == "":
		for _, f := range st.filters {
			f.filled = false
		}
		return nil, nil
	case version == strconv.Itoa(st.version):
		return nil, nil
	case st.last != nil && version == st.lastFrom:
		return st.last, nil
	}
	return nil, simulator.Fault("The collector version "+version+" is not valid.", &types.InvalidCollectorVersion{})
}

func (st *collectorState) answer(from string, set *types.UpdateSet, truncated bool) *types.UpdateSet {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.version++
	set.Version = strconv.Itoa(st.version)
	if truncated {
		set.Truncated = types.NewBool(true)
	}
	st.lastFrom, st.last = from, set
	return set
}

func (st *collectorState) addWait(c *context.CancelFunc) {
	st.mu.Lock()
	st.waits[c] = struct{}{}
	st.mu.Unlock()
}

func (st *collectorState) dropWait(c *context.CancelFunc) {
	st.mu.Lock()
	delete(st.waits, c)
	delete(st.cancelled, c)
	st.mu.Unlock()
}

func (st *collectorState) cancelWaits() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.cancelled == nil {
		st.cancelled = map[*context.CancelFunc]bool{}
	}
	for c := range st.waits {
		st.cancelled[c] = true
		(*c)()
	}
}

func (st *collectorState) wasCancelled(c *context.CancelFunc) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.cancelled[c]
}

func (st *collectorState) pending(f *propertyFilter) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return !f.filled || f.recompute || len(f.leave) > 0 || len(f.dirty) > 0 || len(f.enter) > 0
}

// takeRecompute reports whether the filter's membership must be recomputed now; a filter
// not yet filled starts from no members, so every object it selects enters.
func (st *collectorState) takeRecompute(f *propertyFilter) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	need := f.recompute || !f.filled
	if !f.filled {
		f.filled = true
		f.members = map[types.ManagedObjectReference]bool{}
		f.entering = map[types.ManagedObjectReference]bool{}
		f.enter, f.leave, f.dirtyOrder = nil, nil, nil
		f.dirty = map[types.ManagedObjectReference]map[string]bool{}
	}
	f.recompute = false
	return need
}

func (st *collectorState) removeFilter(f *propertyFilter) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for i, o := range st.filters {
		if o == f {
			st.filters = append(st.filters[:i:i], st.filters[i+1:]...)
			return
		}
	}
}

// --- filters ---

type filterPaths struct {
	match bool
	all   bool
	paths []string
}

type propertyFilter struct {
	mo.PropertyFilter
	pc *propertyCollector

	// guarded by pc.st.mu
	filled, recompute bool
	members           map[types.ManagedObjectReference]bool
	entering          map[types.ManagedObjectReference]bool
	enter, leave      []types.ManagedObjectReference
	dirty             map[types.ManagedObjectReference]map[string]bool // member -> filter paths touched
	dirtyOrder        []types.ManagedObjectReference
	traversal         map[string]bool
	byType            map[string]filterPaths
}

func newFilter(spec types.PropertyFilterSpec, partial bool) *propertyFilter {
	f := &propertyFilter{traversal: map[string]bool{}, byType: map[string]filterPaths{}}
	f.Spec = spec
	f.PartialUpdates = partial
	for _, o := range spec.ObjectSet {
		addTraversal(f.traversal, o.SelectSet)
	}
	return f
}

func addTraversal(into map[string]bool, set []types.BaseSelectionSpec) {
	for _, s := range set {
		if ts, ok := s.(*types.TraversalSpec); ok {
			into[ts.Path] = true
			addTraversal(into, ts.SelectSet)
		}
	}
}

// Lock and Unlock are no-ops so the dispatcher does not serialise calls on the filter.
func (f *propertyFilter) Lock()   {}
func (f *propertyFilter) Unlock() {}

func (f *propertyFilter) DestroyPropertyFilter(ctx *simulator.Context, c *types.DestroyPropertyFilter) soap.HasFault {
	if f.pc != nil && f.pc.st != nil {
		f.pc.st.removeFilter(f)
		simulator.RemoveReference(&f.pc.Filter, c.This)
	}
	ctx.Session.Remove(c.This)
	return &methods.DestroyPropertyFilterBody{Res: &types.DestroyPropertyFilterResponse{}}
}

// moType finds the mo struct type inside a simulator object (wrappers embed it first).
func moType(obj mo.Reference) reflect.Type {
	t := reflect.TypeOf(obj).Elem()
	for path.Base(t.PkgPath()) != "mo" && t.Kind() == reflect.Struct && t.NumField() > 0 {
		t = t.Field(0).Type
	}
	return t
}

// pathsFor returns which filter paths apply to objects of ref's type (cached per type).
func (f *propertyFilter) pathsFor(ref types.ManagedObjectReference, obj mo.Reference) filterPaths {
	if fp, ok := f.byType[ref.Type]; ok {
		return fp
	}
	if obj == nil {
		obj = simulator.Map.Get(ref)
	}
	if obj == nil {
		return filterPaths{}
	}
	rtype := moType(obj)
	fp := filterPaths{}
	for _, p := range f.Spec.PropSet {
		if p.Type != ref.Type {
			field, ok := rtype.FieldByName(p.Type) // e.g. ManagedEntity
			if !ok || !field.Anonymous {
				continue
			}
		}
		fp.match = true
		fp.all = fp.all || (p.All != nil && *p.All)
		fp.paths = append(fp.paths, p.PathSet...)
	}
	f.byType[ref.Type] = fp
	return fp
}

// affectedPaths maps changed property names to the filter paths they touch: the same path, a
// path above it ("runtime" for "runtime.powerState") or below it ("config.hardware.device"
// for "config").
func (f *propertyFilter) affectedPaths(ref types.ManagedObjectReference, obj mo.Reference, names []string) []string {
	fp := f.pathsFor(ref, obj)
	if !fp.match {
		return nil
	}
	var out []string
	seen := map[string]bool{}
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, n := range names {
		if fp.all {
			add(strings.SplitN(n, ".", 2)[0])
		}
		for _, p := range fp.paths {
			if n == p || strings.HasPrefix(n, p+".") || strings.HasPrefix(p, n+".") {
				add(p)
			}
		}
	}
	return out
}

func (f *propertyFilter) applyMembership(refs []types.ManagedObjectReference) {
	target := make(map[types.ManagedObjectReference]bool, len(refs))
	for _, r := range refs {
		target[r] = true
	}
	for ref := range f.members {
		if !target[ref] {
			delete(f.members, ref)
			delete(f.dirty, ref)
			f.leave = append(f.leave, ref)
		}
	}
	kept := f.enter[:0]
	for _, ref := range f.enter {
		if target[ref] {
			kept = append(kept, ref)
		} else {
			delete(f.entering, ref)
		}
	}
	f.enter = kept
	for _, ref := range refs {
		if !f.members[ref] && !f.entering[ref] {
			f.entering[ref] = true
			f.enter = append(f.enter, ref)
		}
	}
}

// take removes up to budget pending updates: leaves, then changed members (with the paths to
// re-read), then objects entering, which become members at once so that a change arriving
// while they are read is recorded as dirty.
func (f *propertyFilter) take(budget int) ([]types.ManagedObjectReference,
	map[types.ManagedObjectReference][]string, []types.ManagedObjectReference) {
	n := min(budget, len(f.leave))
	leaves := append([]types.ManagedObjectReference{}, f.leave[:n]...)
	f.leave = f.leave[n:]
	budget -= n

	modified := map[types.ManagedObjectReference][]string{}
	i := 0
	for ; i < len(f.dirtyOrder) && budget > 0; i++ {
		ref := f.dirtyOrder[i]
		paths, ok := f.dirty[ref]
		if !ok || modified[ref] != nil {
			continue
		}
		delete(f.dirty, ref)
		for p := range paths {
			modified[ref] = append(modified[ref], p)
		}
		budget--
	}
	f.dirtyOrder = f.dirtyOrder[i:]
	if len(f.dirty) == 0 {
		f.dirtyOrder = nil
	}

	n = min(budget, len(f.enter))
	entering := append([]types.ManagedObjectReference{}, f.enter[:n]...)
	f.enter = f.enter[n:]
	for _, ref := range entering {
		delete(f.entering, ref)
		f.members[ref] = true
	}
	return leaves, modified, entering
}

func (f *propertyFilter) forget(ref types.ManagedObjectReference) {
	delete(f.members, ref)
	delete(f.dirty, ref)
	for i, r := range f.leave {
		if r == ref {
			f.leave = append(f.leave[:i:i], f.leave[i+1:]...)
			break
		}
	}
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

// --- the hub ---

type changeHub struct {
	mu         sync.Mutex
	collectors map[*collectorState]bool
}

var changes = &changeHub{collectors: map[*collectorState]bool{}}

func (h *changeHub) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VtpmLauncherChangeHub", Value: "change-hub"}
}

func (h *changeHub) add(st *collectorState) {
	h.mu.Lock()
	h.collectors[st] = true
	h.mu.Unlock()
}

func (h *changeHub) remove(st *collectorState) {
	h.mu.Lock()
	delete(h.collectors, st)
	h.mu.Unlock()
}

func (h *changeHub) each(f func(*collectorState)) {
	h.mu.Lock()
	list := make([]*collectorState, 0, len(h.collectors))
	for st := range h.collectors {
		list = append(list, st)
	}
	h.mu.Unlock()
	for _, st := range list {
		f(st)
	}
}

func (h *changeHub) PutObject(obj mo.Reference) {
	ref := obj.Reference()
	h.each(func(st *collectorState) {
		st.mu.Lock()
		touched := false
		for _, f := range st.filters {
			if f.filled && f.pathsFor(ref, obj).match {
				f.recompute, touched = true, true
			}
		}
		st.mu.Unlock()
		if touched {
			st.signal()
		}
	})
}

func (h *changeHub) UpdateObject(obj mo.Reference, changed []types.PropertyChange) {
	ref := obj.Reference()
	names := make([]string, len(changed))
	for i, c := range changed {
		names[i] = c.Name
	}
	h.each(func(st *collectorState) {
		st.mu.Lock()
		touched := false
		for _, f := range st.filters {
			if f.filled && f.noteUpdate(ref, obj, names) {
				touched = true
			}
		}
		st.mu.Unlock()
		if touched {
			st.signal()
		}
	})
}

func (f *propertyFilter) noteUpdate(ref types.ManagedObjectReference, obj mo.Reference, names []string) bool {
	touched := false
	for _, n := range names {
		if f.traversal[n] {
			f.recompute, touched = true, true
		}
	}
	if !f.members[ref] {
		return touched
	}
	paths := f.affectedPaths(ref, obj, names)
	if len(paths) == 0 {
		return touched
	}
	d, ok := f.dirty[ref]
	if !ok {
		d = map[string]bool{}
		f.dirty[ref] = d
		f.dirtyOrder = append(f.dirtyOrder, ref)
	}
	for _, p := range paths {
		d[p] = true
	}
	return true
}

func (h *changeHub) RemoveObject(ref types.ManagedObjectReference) {
	h.each(func(st *collectorState) {
		st.mu.Lock()
		touched := false
		for _, f := range st.filters {
			if !f.filled {
				continue
			}
			if f.members[ref] {
				delete(f.members, ref)
				delete(f.dirty, ref)
				f.leave = append(f.leave, ref)
				touched = true
			} else if f.entering[ref] {
				f.recompute, touched = true, true
			}
		}
		st.mu.Unlock()
		if touched {
			st.signal()
		}
	})
}

// pruneCollectors drops the collectors of sessions that no longer exist (logged out,
// expired, terminated), so the hub stops feeding them.
func pruneCollectors(every time.Duration) {
	for range time.Tick(every) {
		pruneNow()
	}
}

func pruneNow() {
	live := map[string]bool{}
	for _, s := range sessionList() {
		live[s.Key] = true
	}
	changes.each(func(st *collectorState) {
		if !live[st.session] {
			changes.remove(st)
			st.mu.Lock()
			st.expired = true
			st.mu.Unlock()
			st.cancelWaits()
		}
	})
}

func (st *collectorState) isExpired() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.expired
}

// waitContexts holds the HTTP request context of each WaitForUpdates call in progress, keyed
// by session and collector, so a wait ends when its client goes away (the simulator gives
// methods a background context).
var waitContexts sync.Map

func waitKey(session string, pc types.ManagedObjectReference) string {
	return session + "|" + pc.Value
}

func waitContext(session string, pc types.ManagedObjectReference) context.Context {
	if v, ok := waitContexts.Load(waitKey(session, pc)); ok {
		return v.(context.Context)
	}
	return context.Background()
}
