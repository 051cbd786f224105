--- The service's state as the server reports it (`cato/status` notifications), for the
--- status line, :CatoStatus and `User CatoStatus` autocommands.
local M = {}

local messages = require('cato.messages')

---@type table? The last `cato/status` params.
M.last = nil

local notify_changes = true

---@param enabled boolean
function M.configure(enabled)
  notify_changes = enabled
end

---@param status table?
---@return boolean?
local function reachable(status)
  if type(status) ~= 'table' then
    return nil
  end
  local value = status.reachable
  if value == nil then
    value = status.ok
  end
  if type(value) == 'boolean' then
    return value
  end
  return nil
end

--- Redraws the status lines (Neovim does not while typing unless asked).
function M.redraw()
  pcall(vim.cmd, 'redrawstatus!')
end

--- Handler of the `cato/status` notification. An outage is told by the server's own
--- message (`window/showMessage`, see cato.messages); the recovery is told here.
---@param params table
function M.on_notification(_, params, _)
  local before = reachable(M.last)
  M.last = params
  local now = reachable(params)
  if before == false and now == true then
    -- an outage the user never saw (its error still waiting) needs no "again" either
    local unseen = messages.recovered()
    if notify_changes and not unseen then
      messages.notify('cato: the service is reachable again', vim.log.levels.INFO)
    end
  end
  vim.api.nvim_exec_autocmds('User', { pattern = 'CatoStatus', modeline = false, data = params })
  vim.schedule(M.redraw)
end

---@param value any
---@return string
local function scalar(value)
  if type(value) == 'number' then
    return value == math.floor(value) and tostring(value) or ('%.3g'):format(value)
  end
  if type(value) == 'table' then
    return vim.inspect(value, { newline = ' ', indent = '' })
  end
  return tostring(value)
end

--- Lines that describe a status table, keys sorted, nested tables indented.
---@param status table
---@param indent string?
---@return string[]
function M.format(status, indent)
  indent = indent or ''
  local lines = {}
  for key, value in vim.spairs(status) do
    if type(value) == 'table' and not vim.islist(value) and next(value) ~= nil then
      lines[#lines + 1] = ('%s%s:'):format(indent, key)
      vim.list_extend(lines, M.format(value, indent .. '  '))
    elseif type(value) == 'table' and vim.islist(value) and type(value[1]) == 'table' then
      lines[#lines + 1] = ('%s%s:'):format(indent, key)
      for i, entry in ipairs(value) do
        lines[#lines + 1] = ('%s  [%d]'):format(indent, i)
        vim.list_extend(lines, M.format(entry, indent .. '    '))
      end
    else
      lines[#lines + 1] = ('%s%s: %s'):format(indent, key, scalar(value))
    end
  end
  return lines
end

---@param share number
---@return string
local function percent(share)
  return ('%d%%'):format(math.floor(share * 100 + 0.5))
end

---@param replicas table?
---@return string
local function replica_list(replicas)
  local parts = {}
  for _, r in ipairs(type(replicas) == 'table' and replicas or {}) do
    if type(r) == 'table' and r.id then
      parts[#parts + 1] = ('%s %s (%d in flight)'):format(
        r.id,
        tostring(r.state),
        tonumber(r.in_flight) or 0
      )
    end
  end
  return #parts > 0 and (' - ' .. table.concat(parts, ', ')) or ''
end

--- The lines :CatoStatus shows for the `cato.status` answer.
---@param s table
---@return string[]
function M.summary(s)
  if type(s.state) ~= 'string' then
    return M.format(s, '  ')
  end
  local lines = {}
  local where = s.backend and (' (' .. tostring(s.backend) .. ')') or ''
  lines[#lines + 1] = ('  state: %s%s'):format(s.state, where)
  if type(s.detail) == 'string' then
    lines[#lines + 1] = '  detail: ' .. s.detail
  end
  if type(s.replicasReady) == 'number' then
    local orchestrator = type(s.orchestrator) == 'table' and s.orchestrator or {}
    lines[#lines + 1] = ('  replicas: %d/%d ready%s'):format(
      s.replicasReady,
      tonumber(s.replicasTotal) or 0,
      replica_list(orchestrator.replicas)
    )
  end
  if type(s.lastTtftMs) == 'number' then
    lines[#lines + 1] = ('  last TTFT: %d ms'):format(math.floor(s.lastTtftMs + 0.5))
  end
  local waited = s.suggestMs
  if type(waited) == 'table' and type(waited.p50) == 'number' then
    lines[#lines + 1] = ('  keystroke to suggestion: p50 %d ms, p90 %d ms, p99 %d ms (%d)'):format(
      math.floor(waited.p50 + 0.5),
      math.floor((tonumber(waited.p90) or 0) + 0.5),
      math.floor((tonumber(waited.p99) or 0) + 0.5),
      tonumber(waited.count) or 0
    )
  end
  if type(s.slaAttainment) == 'table' and next(s.slaAttainment) then
    local parts = {}
    for kind, share in vim.spairs(s.slaAttainment) do
      parts[#parts + 1] = ('%s %s'):format(kind, percent(share))
    end
    lines[#lines + 1] = '  SLA attainment: ' .. table.concat(parts, ', ')
  end
  local c = s.completions
  if type(c) == 'table' and type(c.shown) == 'number' then
    local rate = type(c.acceptance_rate) == 'number' and (' (' .. percent(c.acceptance_rate) .. ')')
      or ''
    lines[#lines + 1] = ('  suggestions: %d shown, %d accepted%s, %d from cache'):format(
      c.shown,
      tonumber(c.accepted) or 0,
      rate,
      tonumber(c.cache_hits) or 0
    )
  end
  return lines
end

--- SLA attainment as one share: inline completion's when given per task kind.
---@param value any number, or task kind -> number
---@return number?
local function attainment(value)
  if type(value) == 'number' then
    return value
  end
  if type(value) ~= 'table' then
    return nil
  end
  if type(value.complete) == 'number' then
    return value.complete
  end
  local sum, n = 0, 0
  for _, share in pairs(value) do
    if type(share) == 'number' then
      sum, n = sum + share, n + 1
    end
  end
  return n > 0 and sum / n or nil
end

--- A short text for the status line: empty until the server has said anything.
---@return string
function M.statusline()
  local s = M.last
  if type(s) ~= 'table' then
    return ''
  end
  local ok = reachable(s)
  if ok == false then
    return 'CATO ✗'
  end
  if s.state == 'starting' then
    return 'CATO starting'
  end
  local parts = { 'CATO' }
  local ready = s.replicasReady or s.replicas_ready
  if type(ready) == 'number' then
    parts[#parts + 1] = ('%d ready'):format(ready)
  end
  local ttft = s.lastTtftMs or s.last_ttft_ms
  if type(ttft) == 'number' then
    parts[#parts + 1] = ('%dms'):format(math.floor(ttft + 0.5))
  end
  -- what the user waits for: keystroke to suggestion, median of the recent ones
  local waited = type(s.suggestMs) == 'table' and s.suggestMs.p50
  if type(waited) == 'number' then
    parts[#parts + 1] = ('wait %dms'):format(math.floor(waited + 0.5))
  end
  local sla = attainment(s.slaAttainment or s.sla_attainment)
  if sla then
    parts[#parts + 1] = ('SLA %d%%'):format(math.floor(sla * 100 + 0.5))
  end
  return table.concat(parts, ' ')
end

return M
