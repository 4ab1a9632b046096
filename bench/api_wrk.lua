-- wrk script for bench/api.py (wrk 4.x, LuaJIT). Configured through the environment
-- because init(args) reaches only the worker threads, not the setup/done state:
--
--   MAIP_WRK_MODE    "execute": POST MAIP_WRK_PATH with the body in MAIP_WRK_BODY_FILE
--                    and Prefer: wait=30; "receipts": GET MAIP_WRK_PATH .. id, cycling
--                    through the ids in MAIP_WRK_IDS_FILE (one a line)
--   MAIP_WRK_OUT     where done() writes "rejected N" and (execute) "receipt ID" lines
--   MAIP_WRK_KEEP    how many receipt ids to keep (execute)
--   MAIP_WRK_THREADS wrk's -t, so each thread can start at its own offset
--
-- A response counts as rejected unless it is 200 and, for execute, the orchestration's
-- own (top-level) status is "completed": the step objects carry a "status" of their
-- own, so a substring match would pass a failed orchestration whose steps completed.

local mode = os.getenv("MAIP_WRK_MODE")
local path = os.getenv("MAIP_WRK_PATH")
local keep = tonumber(os.getenv("MAIP_WRK_KEEP") or "0")

local byte, sub, find = string.byte, string.sub, string.find

local function read_file(name)
  local f = assert(io.open(name, "rb"))
  local text = f:read("*a")
  f:close()
  return text
end

-- setup/done state ------------------------------------------------------------------

local threads = {}

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local rejected = 0
  local out = assert(io.open(os.getenv("MAIP_WRK_OUT"), "wb"))
  local kept = 0
  for _, t in ipairs(threads) do
    rejected = rejected + t:get("rejected")
    for _, id in ipairs(t:get("receipts")) do
      if kept < keep then
        out:write("receipt ", id, "\n")
        kept = kept + 1
      end
    end
  end
  out:write("rejected ", rejected, "\n")
  out:close()
end

-- worker threads ----------------------------------------------------------------------

rejected = 0
receipts = {}

local requests_ = {}
local next_ = 1

function init(args)
  if mode == "execute" then
    local body = read_file(os.getenv("MAIP_WRK_BODY_FILE"))
    -- Set on wrk itself: a headers argument to wrk.format would replace the -H headers.
    wrk.method = "POST"
    wrk.body = body
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["Prefer"] = "wait=30"
    requests_[1] = wrk.format(nil, path)
  else
    -- Pre-formatted, and each thread starts at its own offset so threads do not all
    -- walk the same ids in step.
    for id in string.gmatch(read_file(os.getenv("MAIP_WRK_IDS_FILE")), "[^\n]+") do
      requests_[#requests_ + 1] = wrk.format("GET", path .. id)
    end
    assert(#requests_ > 0, "no receipt ids")
    local count = tonumber(os.getenv("MAIP_WRK_THREADS") or "1")
    next_ = (thread_index * math.floor(#requests_ / count)) % #requests_ + 1
  end
end

function request()
  local r = requests_[next_]
  next_ = next_ + 1
  if next_ > #requests_ then
    next_ = 1
  end
  return r
end

-- The end of the JSON string whose opening quote is at i (the index of its closing quote).
local function string_end(body, i)
  local j = i + 1
  while true do
    local q = find(body, '["\\]', j)
    if q == nil then
      return nil
    end
    if byte(body, q) == 92 then
      j = q + 2
    else
      return q
    end
  end
end

-- The top-level "status" of a JSON object; the strings of its top-level "receipts" array
-- are appended to out. Tracks nesting and skips strings whole, so keys and values inside
-- parameters, steps or results cannot match.
local function scan(body, out)
  local depth, i, n = 0, 1, #body
  local key, in_receipts, status = nil, false, nil
  while i <= n do
    local c = byte(body, i)
    if c == 34 then -- "
      local j = string_end(body, i)
      if j == nil then
        return nil
      end
      local after = find(body, "[^ \t\r\n]", j + 1)
      local is_key = after ~= nil and byte(body, after) == 58 -- :
      if depth == 1 then
        if is_key then
          key = sub(body, i + 1, j - 1)
        elseif key == "status" then
          status = sub(body, i + 1, j - 1)
        end
      elseif depth == 2 and in_receipts then
        out[#out + 1] = sub(body, i + 1, j - 1)
      end
      i = j + 1
    else
      if c == 123 or c == 91 then -- { [
        depth = depth + 1
        if depth == 2 and c == 91 and key == "receipts" then
          in_receipts = true
        end
      elseif c == 125 or c == 93 then -- } ]
        depth = depth - 1
        if depth == 1 then
          in_receipts = false
        end
      end
      i = i + 1
    end
  end
  return status
end

function response(status, headers, body)
  if status ~= 200 then
    rejected = rejected + 1
  elseif mode == "execute" then
    local ids = {}
    if scan(body, ids) ~= "completed" then
      rejected = rejected + 1
    else
      for _, id in ipairs(ids) do
        if #receipts >= keep then
          break
        end
        receipts[#receipts + 1] = id
      end
    end
  end
end
