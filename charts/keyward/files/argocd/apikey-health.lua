-- Argo CD health check for keyward.dev/ApiKey (resource.customizations,
-- key "keyward.dev_ApiKey": health.lua). It reads the same conditions as
-- kstatus: Stalled is Degraded, Reconciling or an unobserved generation is
-- Progressing, Ready is Healthy. Tested by controllers/kstatus_test.go.
local hs = {status = "Progressing", message = "waiting for keyward to issue the key"}
if obj.status == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "keyward has not seen the latest spec yet"
  return hs
end
local ready = nil
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Stalled" and c.status == "True" then
      return {status = "Degraded", message = c.reason .. ": " .. (c.message or "")}
    end
    if c.type == "Reconciling" and c.status == "True" then
      return {status = "Progressing", message = c.message or c.reason}
    end
    if c.type == "Ready" then
      ready = c
    end
  end
end
if ready ~= nil and ready.status == "True" then
  return {status = "Healthy", message = ready.reason .. ": " .. (ready.message or "")}
end
return hs
