--- Insert-mode keys that act only while a suggestion is shown and otherwise fall through
--- to whatever the key did before (another mapping, or the key itself).
local M = {}

local api = vim.api

---@type table<string, function>
local previous_callbacks = {}

--- The mappings our keys replaced, restored by `unmap_all`.
---@type table<string, table>
local originals = {}

---@param keys string
---@return string
local function termcodes(keys)
  return api.nvim_replace_termcodes(keys, true, true, true)
end

---@param mapping table The maparg() dictionary of the mapping we replace.
---@return string
local function expand_sid(mapping)
  local rhs = mapping.rhs or ''
  if mapping.sid and mapping.sid > 0 then
    rhs = rhs:gsub('<[Ss][Ii][Dd]>', ('<SNR>%d_'):format(mapping.sid))
  end
  return rhs
end

--- What the key does when no suggestion is shown.
---@param lhs string
---@param mapping table? The maparg() dictionary of the mapping we replace.
---@return string keys for an expr mapping
local function fall_through(lhs, mapping)
  if not mapping or vim.tbl_isempty(mapping) then
    return termcodes(lhs)
  end
  if mapping.callback and mapping.expr == 1 then
    local keys = mapping.callback() or ''
    return mapping.replace_keycodes == 1 and termcodes(keys) or keys
  end
  if mapping.callback then
    return termcodes(('<Cmd>lua require("cato.keymaps").run_previous(%q)<CR>'):format(lhs))
  end
  local rhs = expand_sid(mapping)
  if mapping.expr == 1 then
    return api.nvim_eval(rhs)
  end
  return termcodes(rhs)
end

--- Runs the callback of a non-expr mapping that a cato key replaced.
---@param lhs string
function M.run_previous(lhs)
  local fn = previous_callbacks[lhs]
  if fn then
    fn()
  end
end

--- Keys that run a Lua expression through <Cmd>, outside the text lock.
---@param lua string
---@return string
function M.cmd(lua)
  return termcodes(('<Cmd>lua %s<CR>'):format(lua))
end

--- Maps `lhs` in insert mode: `handler()` returns the keys to run, or nil to fall through
--- to what the key did before.
---@param lhs string|false
---@param handler fun(): string?
---@param desc string
function M.map(lhs, handler, desc)
  if not lhs then
    return
  end
  local mapping = vim.fn.maparg(lhs, 'i', false, true)
  if mapping.desc and vim.startswith(mapping.desc, 'cato: ') then
    mapping = originals[lhs]
  else
    originals[lhs] = mapping
  end
  if mapping and mapping.callback and mapping.expr ~= 1 then
    previous_callbacks[lhs] = mapping.callback
  end
  vim.keymap.set('i', lhs, function()
    return handler() or fall_through(lhs, mapping)
  end, { expr = true, replace_keycodes = false, silent = true, desc = 'cato: ' .. desc })
end

--- Removes every cato key and puts back the mappings they replaced.
function M.unmap_all()
  for lhs, mapping in pairs(originals) do
    pcall(vim.keymap.del, 'i', lhs)
    if not vim.tbl_isempty(mapping) then
      vim.fn.mapset('i', false, mapping)
    end
  end
  originals = {}
  previous_callbacks = {}
end

return M
