-- wrk script: one job submission per request (POST /v1/jobs), the Skyclaw
-- counterpart of the etcd anchor's put.lua. A 201 means the job was committed
-- by a majority of the cluster. The cluster token comes from SKYCLAW_TOKEN in
-- wrk's environment (bench/cluster.sh sets it).
local token = os.getenv("SKYCLAW_TOKEN")
if token == nil or token == "" then
  error("wrk-submit.lua: set SKYCLAW_TOKEN to the cluster token")
end
wrk.method = "POST"
wrk.body   = '{"kind":"shell","command":"true"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-skyclaw-token"] = token
