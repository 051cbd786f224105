--- What the server and the plugin tell the user, through vim.notify, without ever stopping
--- the typing: messages that come while in insert (or replace) mode wait until it is left
--- (a long one there would raise a Press-ENTER prompt), an error is shown once per outage
--- (until the service is reachable again), and no message twice within `min_interval_ms`.
local M = {}

--- LSP MessageType -> vim.log.levels.
local LEVELS = {
  [1] = vim.log.levels.ERROR,
  [2] = vim.log.levels.WARN,
  [3] = vim.log.levels.INFO,
  [4] = vim.log.levels.DEBUG,
}

M.min_interval_ms = 5000

---@type { text: string, level: integer }[] Messages held back while typing.
local held = {}
---@type table<string, boolean> Messages shown in the current outage.
local shown = {}
---@type table<string, integer> When a message was last shown (vim.uv.now()).
local last_at = {}
local group = nil

---@return boolean
local function typing()
  local mode = vim.api.nvim_get_mode().mode
  return mode:sub(1, 1) == 'i' or mode:sub(1, 1) == 'R'
end

--- With Neovim's own vim.notify, a message wider than the command line raises a
--- Press-ENTER prompt: it is cut to fit (the whole text stays in :CatoStatus and the
--- server's log). A notification plugin gets the whole text.
---@param text string
---@return string
function M.fit(text)
  local info = debug.getinfo(vim.notify, 'S')
  local builtin = info ~= nil and (info.source or ''):find('vim/_editor.lua', 1, true) ~= nil
  local room = vim.v.echospace
  text = text:gsub('[\r\n]+', ' ')
  if not builtin or room <= 1 or vim.fn.strdisplaywidth(text) <= room then
    return text
  end
  return vim.fn.strcharpart(text, 0, room - 1) .. '…'
end

local function show(text, level)
  vim.notify(M.fit(text), level)
end

--- Shows what waited for insert mode to end: one message (the most severe, the latest
--- of those), since two in a row fill the command line and raise a Press-ENTER prompt.
local function flush()
  local pending = held
  held = {}
  local pick = nil
  for _, m in ipairs(pending) do
    if pick == nil or m.level >= pick.level then
      pick = m
    end
  end
  if pick then
    show(pick.text, pick.level)
  end
end

local function ensure_autocmd()
  if group then
    return
  end
  group = vim.api.nvim_create_augroup('cato.messages', { clear = true })
  vim.api.nvim_create_autocmd('InsertLeave', {
    group = group,
    callback = function()
      vim.schedule(flush)
    end,
  })
end

--- Shows `text` at `level` now, or when insert mode is left; repeats are dropped.
---@param text string
---@param level integer vim.log.levels
---@return boolean queued_or_shown
function M.notify(text, level)
  local now = vim.uv.now()
  if shown[text] or (last_at[text] and now - last_at[text] < M.min_interval_ms) then
    return false
  end
  shown[text] = level >= vim.log.levels.ERROR or nil
  last_at[text] = now
  if typing() then
    ensure_autocmd()
    held[#held + 1] = { text = text, level = level }
  else
    show(text, level)
  end
  return true
end

--- The service works again: the next outage's messages are shown again, and the errors
--- of this one still waiting for insert mode to end are dropped.
---@return boolean dropped whether the user never saw this outage's errors
function M.recovered()
  shown = {}
  local before = #held
  held = vim.tbl_filter(function(m)
    if m.level >= vim.log.levels.ERROR then
      last_at[m.text] = nil -- never shown: the next outage may tell it at once
      return false
    end
    return true
  end, held)
  return #held < before
end

--- Messages waiting for insert mode to end.
---@return { text: string, level: integer }[]
function M.held()
  return vim.deepcopy(held)
end

--- Forgets everything (tests).
function M.reset()
  held, shown, last_at = {}, {}, {}
end

--- Handler of `window/showMessage`: the server's message at its own level, quietly.
---@param params lsp.ShowMessageParams
function M.on_show_message(_, params, _)
  if type(params) ~= 'table' or type(params.message) ~= 'string' then
    return vim.NIL
  end
  M.notify(params.message, LEVELS[params.type] or vim.log.levels.INFO)
  return vim.NIL
end

return M
