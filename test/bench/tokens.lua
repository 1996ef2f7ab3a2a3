-- wrk script of `make bench`: every request carries one of the tokens in
-- $KW_TOKENS (one a line), in turn, in the x-api-key header.
local tokens = {}
for line in io.lines(os.getenv("KW_TOKENS")) do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/authn?scope=bench:read", { ["x-api-key"] = tokens[(i % #tokens) + 1] })
end
