package main

// The PropertyCollector as vCenter pages and watches, in place of govmomi 0.24.2's:
//   - RetrievePropertiesEx honours RetrieveOptions.maxObjects and, when it is unset, caps a page
//     at -page-size objects (vCenter caps at 100); ContinueRetrievePropertiesEx serves the rest
//     by token and CancelRetrievePropertiesEx drops it.
//   - WaitForUpdatesEx honours WaitOptions.maxObjectUpdates (unset: -update-page-size) with
//     truncated=true and a version to continue from. The first call (version "") and the first
//     call after CreateFilter bring every object of the filter as "enter"; later calls bring
//     only what changed since the version given.
//   - A change costs the changed object: a hub registered once in the object map (hub.go)
//     marks objects dirty per filter, and only those are re-read. govmomi re-collects every
//     filter on every update, and its per-session collectors share one handler key, so a
//     second session's watch silently stopped receiving updates.
//
// Collection itself is the simulator's (the embedded PropertyCollector's RetrievePropertiesEx
// over an explicit object list), so property paths and values stay exactly the simulator's.
// The dispatcher creates one collector per session from this type by reflection (see
// simulator.Session.Get), so its zero value must work: state is made on first use.

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// watchStats counts the watch's work (admin GET /_sim/watch), so a test can prove that a
// change costs the changed object and not the filter.
var watchStats struct {
	sync.Mutex
	ObjectsRead     int `json:"objectsRead"`     // objects whose properties WaitForUpdates* read
	MembershipScans int `json:"membershipScans"` // filter traversals (fills and membership changes)
}

func countWatch(objects, scans int) {
	watchStats.Lock()
	watchStats.ObjectsRead += objects
	watchStats.MembershipScans += scans
	watchStats.Unlock()
}

var (
	retrievePageSize = 100  // objects per RetrievePropertiesEx page when maxObjects is unset
	updatePageSize   = 1000 // object updates per WaitForUpdatesEx when maxObjectUpdates is unset
	updateBatchDelay = 50 * time.Millisecond
)

type propertyCollector struct {
	simulator.PropertyCollector // first field: the simulator digs the mo type out of it
	st                          *collectorState
}

var collectorInit sync.Mutex

// state returns the collector's state, creating it (and registering it with the hub) once.
func (pc *propertyCollector) state(ctx *simulator.Context) *collectorState {
	collectorInit.Lock()
	defer collectorInit.Unlock()
	if pc.st == nil {
		pc.st = &collectorState{
			session:    ctx.Session.Key,
			self:       pc.Self,
			wake:       make(chan struct{}, 1),
			retrievals: map[string]*pendingRetrieval{},
			waits:      map[*context.CancelFunc]struct{}{},
		}
		changes.add(pc.st)
	}
	return pc.st
}

func (pc *propertyCollector) collect(ctx *simulator.Context, spec types.PropertyFilterSpec) ([]types.ObjectContent, *soap.Fault) {
	req := &types.RetrievePropertiesEx{This: pc.Self, SpecSet: []types.PropertyFilterSpec{spec}}
	res := pc.PropertyCollector.RetrievePropertiesEx(ctx, req)
	if f := res.Fault(); f != nil {
		return nil, f
	}
	body := res.(*methods.RetrievePropertiesExBody)
	if body.Res == nil || body.Res.Returnval == nil {
		return nil, nil
	}
	return body.Res.Returnval.Objects, nil
}

// membersOf lists, in traversal order, the objects a filter spec selects, reading no property.
func (pc *propertyCollector) membersOf(ctx *simulator.Context, spec types.PropertyFilterSpec) ([]types.ManagedObjectReference, *soap.Fault) {
	bare := spec
	bare.PropSet = make([]types.PropertySpec, len(spec.PropSet))
	for i, p := range spec.PropSet {
		bare.PropSet[i] = types.PropertySpec{Type: p.Type}
	}
	objs, fault := pc.collect(ctx, bare)
	refs := make([]types.ManagedObjectReference, len(objs))
	for i, o := range objs {
		refs[i] = o.Obj
	}
	return refs, fault
}

// collectObjects reads props of the given objects in one pass; vanished objects are skipped.
func (pc *propertyCollector) collectObjects(ctx *simulator.Context, refs []types.ManagedObjectReference,
	props []types.PropertySpec) ([]types.ObjectContent, *soap.Fault) {
	if len(refs) == 0 {
		return nil, nil
	}
	spec := types.PropertyFilterSpec{PropSet: props, ReportMissingObjectsInResults: types.NewBool(true)}
	for _, ref := range refs {
		spec.ObjectSet = append(spec.ObjectSet, types.ObjectSpec{Obj: ref})
	}
	return pc.collect(ctx, spec)
}

// --- RetrievePropertiesEx paging ---

type pendingRetrieval struct {
	refs  []types.ManagedObjectReference
	props []types.PropertySpec
	size  int
}

func pageSize(opts types.RetrieveOptions) int {
	if opts.MaxObjects > 0 {
		return int(opts.MaxObjects)
	}
	return retrievePageSize
}

func (pc *propertyCollector) RetrievePropertiesEx(ctx *simulator.Context, r *types.RetrievePropertiesEx) soap.HasFault {
	body := &methods.RetrievePropertiesExBody{}
	var refs []types.ManagedObjectReference
	var props []types.PropertySpec
	seen := map[types.ManagedObjectReference]bool{}
	for _, spec := range r.SpecSet {
		members, fault := pc.membersOf(ctx, spec)
		if fault != nil {
			body.Fault_ = fault
			return body
		}
		for _, ref := range members {
			if !seen[ref] {
				seen[ref] = true
				refs = append(refs, ref)
			}
		}
		props = append(props, spec.PropSet...)
	}
	st := pc.state(ctx)
	res, fault := pc.page(ctx, st, &pendingRetrieval{refs: refs, props: props}, pageSize(r.Options), "")
	if fault != nil {
		body.Fault_ = fault
		return body
	}
	if len(res.Objects) == 0 && res.Token == "" {
		res = nil // vCenter answers no objects with no result at all
	}
	body.Res = &types.RetrievePropertiesExResponse{Returnval: res}
	return body
}

// page collects the next page of p; the rest stays under a token (token "" makes a new one).
func (pc *propertyCollector) page(ctx *simulator.Context, st *collectorState, p *pendingRetrieval,
	size int, token string) (*types.RetrieveResult, *soap.Fault) {
	first := p.refs
	if len(first) > size {
		first = first[:size]
	}
	objs, fault := pc.collectObjects(ctx, first, p.props)
	if fault != nil {
		return nil, fault
	}
	res := &types.RetrieveResult{Objects: objs}
	rest := p.refs[len(first):]
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(rest) == 0 {
		delete(st.retrievals, token)
		return res, nil
	}
	if token == "" {
		st.tokenSeq++
		token = strconv.Itoa(st.tokenSeq)
	}
	st.retrievals[token] = &pendingRetrieval{refs: rest, props: p.props, size: size}
	res.Token = token
	return res, nil
}

func invalidToken() *soap.Fault {
	return simulator.Fault("The token is not valid or has been used up.",
		&types.InvalidArgument{InvalidProperty: "token"})
}

func (pc *propertyCollector) ContinueRetrievePropertiesEx(ctx *simulator.Context, r *types.ContinueRetrievePropertiesEx) soap.HasFault {
	body := &methods.ContinueRetrievePropertiesExBody{}
	st := pc.state(ctx)
	st.mu.Lock()
	p := st.retrievals[r.Token]
	st.mu.Unlock()
	if p == nil {
		body.Fault_ = invalidToken()
		return body
	}
	res, fault := pc.page(ctx, st, p, p.size, r.Token)
	if fault != nil {
		body.Fault_ = fault
		return body
	}
	body.Res = &types.ContinueRetrievePropertiesExResponse{Returnval: *res}
	return body
}

func (pc *propertyCollector) CancelRetrievePropertiesEx(ctx *simulator.Context, r *types.CancelRetrievePropertiesEx) soap.HasFault {
	body := &methods.CancelRetrievePropertiesExBody{}
	st := pc.state(ctx)
	st.mu.Lock()
	_, ok := st.retrievals[r.Token]
	delete(st.retrievals, r.Token)
	st.mu.Unlock()
	if !ok {
		body.Fault_ = invalidToken()
		return body
	}
	body.Res = &types.CancelRetrievePropertiesExResponse{}
	return body
}

// --- collectors and filters ---

func (pc *propertyCollector) CreatePropertyCollector(ctx *simulator.Context, c *types.CreatePropertyCollector) soap.HasFault {
	cpc := &propertyCollector{}
	cpc.Self = types.ManagedObjectReference{Type: "PropertyCollector"}
	ref := ctx.Session.Put(cpc).Reference()
	return &methods.CreatePropertyCollectorBody{Res: &types.CreatePropertyCollectorResponse{Returnval: ref}}
}

func (pc *propertyCollector) DestroyPropertyCollector(ctx *simulator.Context, c *types.DestroyPropertyCollector) soap.HasFault {
	st := pc.state(ctx)
	st.cancelWaits()
	st.mu.Lock()
	filters := st.filters
	st.filters = nil
	st.mu.Unlock()
	for _, f := range filters {
		ctx.Session.Remove(f.Self)
	}
	pc.Filter = nil
	changes.remove(st)
	// Unlike the simulator, never ctx.Map.Remove: for the session's default collector that
	// would delete the ServiceContent singleton for every session.
	ctx.Session.Remove(c.This)
	return &methods.DestroyPropertyCollectorBody{Res: &types.DestroyPropertyCollectorResponse{}}
}

func (pc *propertyCollector) CreateFilter(ctx *simulator.Context, c *types.CreateFilter) soap.HasFault {
	st := pc.state(ctx)
	f := newFilter(c.Spec, c.PartialUpdates)
	f.pc = pc
	f.Self = types.ManagedObjectReference{Type: "PropertyFilter"}
	ref := ctx.Session.Put(f).Reference()
	st.mu.Lock()
	st.filters = append(st.filters, f)
	st.mu.Unlock()
	pc.Filter = append(pc.Filter, ref)
	st.signal() // a wait in progress brings the new filter's objects, as on vCenter
	return &methods.CreateFilterBody{Res: &types.CreateFilterResponse{Returnval: ref}}
}

// --- WaitForUpdatesEx ---

func (pc *propertyCollector) WaitForUpdatesEx(ctx *simulator.Context, r *types.WaitForUpdatesEx) soap.HasFault {
	body := &methods.WaitForUpdatesExBody{}
	opts := types.WaitOptions{}
	if r.Options != nil {
		opts = *r.Options
	}
	set, fault := pc.waitForUpdates(ctx, r.Version, opts)
	if fault != nil {
		body.Fault_ = fault
		return body
	}
	body.Res = &types.WaitForUpdatesExResponse{Returnval: set}
	return body
}

// WaitForUpdates is the deprecated form: no limits, waits until something changes.
func (pc *propertyCollector) WaitForUpdates(ctx *simulator.Context, r *types.WaitForUpdates) soap.HasFault {
	body := &methods.WaitForUpdatesBody{}
	set, fault := pc.waitForUpdates(ctx, r.Version, types.WaitOptions{MaxObjectUpdates: -1})
	if fault == nil && set == nil { // only when the client went away: nobody reads this
		fault = simulator.Fault("The request was canceled.", &types.RequestCanceled{})
	}
	if fault != nil {
		body.Fault_ = fault
		return body
	}
	body.Res = &types.WaitForUpdatesResponse{Returnval: *set}
	return body
}

// CheckForUpdates is the deprecated non-blocking form.
func (pc *propertyCollector) CheckForUpdates(ctx *simulator.Context, r *types.CheckForUpdates) soap.HasFault {
	body := &methods.CheckForUpdatesBody{}
	set, fault := pc.waitForUpdates(ctx, r.Version, types.WaitOptions{MaxWaitSeconds: types.NewInt32(0), MaxObjectUpdates: -1})
	if fault != nil {
		body.Fault_ = fault
		return body
	}
	body.Res = &types.CheckForUpdatesResponse{Returnval: set}
	return body
}

func (pc *propertyCollector) CancelWaitForUpdates(ctx *simulator.Context, r *types.CancelWaitForUpdates) soap.HasFault {
	pc.state(ctx).cancelWaits()
	return &methods.CancelWaitForUpdatesBody{Res: &types.CancelWaitForUpdatesResponse{}}
}

func updateBudget(opts types.WaitOptions) int {
	switch {
	case opts.MaxObjectUpdates > 0:
		return int(opts.MaxObjectUpdates)
	case opts.MaxObjectUpdates < 0: // deprecated methods: unlimited
		return int(^uint(0) >> 1)
	}
	return updatePageSize
}

// waitForUpdates answers one WaitForUpdates(Ex)/CheckForUpdates call; a nil set means
// "nothing changed before maxWaitSeconds".
func (pc *propertyCollector) waitForUpdates(ctx *simulator.Context, version string,
	opts types.WaitOptions) (*types.UpdateSet, *soap.Fault) {
	st := pc.state(ctx)
	if last, fault := st.checkVersion(version); fault != nil || last != nil {
		return last, fault
	}
	parent := waitContext(ctx.Session.Key, pc.Self) // ends when the client goes away
	if opts.MaxWaitSeconds != nil && *opts.MaxWaitSeconds > 0 {
		var stop context.CancelFunc
		parent, stop = context.WithTimeout(parent, time.Duration(*opts.MaxWaitSeconds)*time.Second)
		defer stop()
	}
	wait, cancel := context.WithCancel(parent)
	defer cancel()
	st.addWait(&cancel)
	defer st.dropWait(&cancel)
	budget := updateBudget(opts)
	for {
		set, truncated, fault := pc.drain(ctx, st, budget)
		if fault != nil {
			return nil, fault
		}
		if len(set.FilterSet) > 0 || version == "" {
			return st.answer(version, set, truncated), nil
		}
		if opts.MaxWaitSeconds != nil && *opts.MaxWaitSeconds == 0 {
			return nil, nil
		}
		select {
		case <-st.wake:
			sleepOrDone(wait, updateBatchDelay) // let a burst of changes arrive together
		case <-wait.Done():
			if st.isExpired() {
				return nil, simulator.Fault("The session is not authenticated.", &types.NotAuthenticated{
					NoPermission: types.NoPermission{Object: pc.Self, PrivilegeId: "System.View"},
				})
			}
			if st.wasCancelled(&cancel) {
				return nil, simulator.Fault("The request was canceled.", &types.RequestCanceled{})
			}
			return nil, nil
		}
	}
}

func sleepOrDone(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// drain collects up to budget object updates over every filter, in creation order.
func (pc *propertyCollector) drain(ctx *simulator.Context, st *collectorState, budget int) (*types.UpdateSet, bool, *soap.Fault) {
	set := &types.UpdateSet{}
	st.mu.Lock()
	filters := append([]*propertyFilter{}, st.filters...)
	st.mu.Unlock()
	truncated := false
	for _, f := range filters {
		if budget <= 0 {
			truncated = truncated || st.pending(f)
			continue
		}
		fu, fault := pc.drainFilter(ctx, st, f, budget)
		if fault != nil {
			return nil, false, fault
		}
		budget -= len(fu.ObjectSet)
		if len(fu.ObjectSet) > 0 {
			set.FilterSet = append(set.FilterSet, fu)
		}
		if budget <= 0 {
			truncated = truncated || st.pending(f)
		}
	}
	return set, truncated, nil
}

// drainFilter brings one filter's membership up to date and emits up to budget updates:
// leaves first, then changed members, then objects entering.
func (pc *propertyCollector) drainFilter(ctx *simulator.Context, st *collectorState, f *propertyFilter,
	budget int) (types.PropertyFilterUpdate, *soap.Fault) {
	fu := types.PropertyFilterUpdate{Filter: f.Self}
	if st.takeRecompute(f) {
		countWatch(0, 1)
		refs, fault := pc.membersOf(ctx, f.Spec)
		if fault != nil {
			refs = nil // the filter's root is gone: everything leaves
		}
		st.mu.Lock()
		f.applyMembership(refs)
		st.mu.Unlock()
	}
	st.mu.Lock()
	leaves, modified, entering := f.take(budget)
	st.mu.Unlock()
	for _, ref := range leaves {
		fu.ObjectSet = append(fu.ObjectSet, types.ObjectUpdate{Kind: types.ObjectUpdateKindLeave, Obj: ref})
	}
	mods, fault := pc.modifications(ctx, f, modified)
	if fault != nil {
		return fu, fault
	}
	fu.ObjectSet = append(fu.ObjectSet, mods...)
	enters, fault := pc.enters(ctx, st, f, entering)
	if fault != nil {
		return fu, fault
	}
	fu.ObjectSet = append(fu.ObjectSet, enters...)
	return fu, nil
}

func assignments(props []types.DynamicProperty) []types.PropertyChange {
	out := make([]types.PropertyChange, 0, len(props))
	for _, p := range props {
		out = append(out, types.PropertyChange{Name: p.Name, Op: types.PropertyChangeOpAssign, Val: p.Val})
	}
	return out
}

// enters reads every filter property of the objects entering.
func (pc *propertyCollector) enters(ctx *simulator.Context, st *collectorState, f *propertyFilter,
	refs []types.ManagedObjectReference) ([]types.ObjectUpdate, *soap.Fault) {
	countWatch(len(refs), 0)
	objs, fault := pc.collectObjects(ctx, refs, f.Spec.PropSet)
	if fault != nil {
		return nil, fault
	}
	got := map[types.ManagedObjectReference]bool{}
	out := make([]types.ObjectUpdate, 0, len(objs))
	for _, o := range objs {
		got[o.Obj] = true
		out = append(out, types.ObjectUpdate{
			Kind: types.ObjectUpdateKindEnter, Obj: o.Obj, ChangeSet: assignments(o.PropSet), MissingSet: o.MissingSet,
		})
	}
	st.mu.Lock()
	for _, ref := range refs {
		if !got[ref] { // vanished meanwhile: the client never saw it enter, so no leave either
			f.forget(ref)
		}
	}
	st.mu.Unlock()
	return out, nil
}

// modifications re-reads only the filter paths the recorded changes touched, grouping objects
// with the same paths into one read.
func (pc *propertyCollector) modifications(ctx *simulator.Context, f *propertyFilter,
	modified map[types.ManagedObjectReference][]string) ([]types.ObjectUpdate, *soap.Fault) {
	groups := map[string][]types.ManagedObjectReference{}
	paths := map[string][]string{}
	var order []string
	for ref, p := range modified {
		sort.Strings(p)
		key := fmt.Sprint(ref.Type, p)
		if _, ok := groups[key]; !ok {
			order = append(order, key)
			paths[key] = p
		}
		groups[key] = append(groups[key], ref)
	}
	var out []types.ObjectUpdate
	for _, key := range order {
		refs := groups[key]
		countWatch(len(refs), 0)
		props := []types.PropertySpec{{Type: refs[0].Type, PathSet: paths[key]}}
		objs, fault := pc.collectObjects(ctx, refs, props)
		if fault != nil {
			return nil, fault
		}
		for _, o := range objs {
			out = append(out, types.ObjectUpdate{Kind: types.ObjectUpdateKindModify, Obj: o.Obj,
				ChangeSet: modifiedValues(paths[key], o.PropSet)})
		}
	}
	return out, nil
}

// modifiedValues assigns each re-read path; a path that is now unset is assigned no value.
func modifiedValues(paths []string, props []types.DynamicProperty) []types.PropertyChange {
	got := map[string]types.AnyType{}
	for _, p := range props {
		got[p.Name] = p.Val
	}
	out := make([]types.PropertyChange, 0, len(paths))
	for _, p := range paths {
		out = append(out, types.PropertyChange{Name: p, Op: types.PropertyChangeOpAssign, Val: got[p]})
	}
	return out
}
