-- Argo CD health check for vtpm-operator.io/VTPMPolicy (Argo CD passes the object as `obj`).
--
-- Decisions, first match wins:
--   1. Progressing: no status yet, or status.observedGeneration < metadata.generation
--      (the operator has not acted on the latest spec; the rest of the status is stale).
--   2. Degraded:    Stalled=True. Nothing more happens until a person acts (missing Secret,
--      wrong credentials, unknown tag, missing key provider, removal not allowed, blocked VMs).
--   3. Degraded:    Ready=False with a policy-level failure reason (see `failing` below), even
--      while the operator keeps retrying: vCenter unreachable or credentials refused is an outage
--      the application owner must see, not progress.
--   4. Progressing: Reconciling=True (VM changes in flight).
--   5. Healthy:     Ready=True.
--   6. Degraded:    Ready=False for any other reason once nothing is in flight (for example VMs
--      Failed, or NonCompliant in Audit mode): the policy is not achieving what it declares.
--   7. Progressing: Ready missing or Unknown (first sync not finished).
-- Written for Lua 5.1 (gopher-lua, Argo CD's interpreter).

local failing = {
  VCenterUnreachable = true,
  AuthenticationFailed = true,
  SecretNotFound = true,
  TagNotFound = true,
  KeyProviderMissing = true,
  RemovalNotAllowed = true,
  NotVCenter = true,
  InsufficientPrivileges = true,
}

local function condition(conditions, ctype)
  for _, c in ipairs(conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil then
    return c.reason
  end
  return fallback
end

local hs = {}
local status = obj.status
local generation = 0
if obj.metadata ~= nil and obj.metadata.generation ~= nil then
  generation = obj.metadata.generation
end

if status == nil or status.observedGeneration == nil or status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to process generation " .. tostring(generation)
  return hs
end

local conditions = status.conditions or {}
local ready = condition(conditions, "Ready")
local stalled = condition(conditions, "Stalled")
local reconciling = condition(conditions, "Reconciling")

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

if ready ~= nil and ready.status == "False" and failing[ready.reason or ""] then
  hs.status = "Degraded"
  hs.message = describe(ready, "Not ready")
  return hs
end

if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Changing VMs")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "All selected VMs are compliant")
  return hs
end

if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(ready, "Not ready")
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the first sync with vCenter"
return hs
