package main

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// setField makes SetField replace an entity's value for a field, as vCenter does: govmomi 0.24.2
// appends a second value for the same key instead. The entity's old values for the key are
// dropped here; the simulator then appends the new one (or refuses an unknown key).
func (s *state) setField(c *soapCall) bool {
	req, err := decodeVim(c.body)
	set, ok := req.(*types.SetField)
	if err != nil || !ok {
		return false
	}
	e := entity(set.Entity)
	if e == nil {
		return false
	}
	simulator.Map.WithLock(e, func() {
		me := e.Entity()
		me.CustomValue = withoutKey(me.CustomValue, set.Key)
		me.Value = withoutKey(me.Value, set.Key)
	})
	return false
}

func withoutKey(values []types.BaseCustomFieldValue, key int32) []types.BaseCustomFieldValue {
	kept := values[:0]
	for _, v := range values {
		if v.GetCustomFieldValue().Key != key {
			kept = append(kept, v)
		}
	}
	return kept
}
