--- Options of the plugin: defaults, merging with the user's table, validation.
---
--- `settings` is the server's `cato` section, sent as-is (initializationOptions and
--- workspace/configuration), so the plugin never needs to know every server setting.
local M = {}

---@class cato.Keymaps
---@field accept string|false Accept the whole suggestion (falls through when none is shown).
---@field accept_word string|false Accept the next word of the suggestion.
---@field accept_line string|false Accept the rest of the suggestion's first line.
---@field dismiss string|false Hide the suggestion.
---@field trigger string|false Ask for a suggestion now.

---@class cato.GhostText
---@field enabled boolean Show inline suggestions.
---@field backend 'auto'|'native'|'extmark' `native` is vim.lsp.inline_completion (0.12+).
---@field debounce_ms integer Wait after the last keystroke before asking the server.
---@field position 'inline'|'eol' Where the first line of a suggestion is drawn.
---@field hl_group string Highlight of the suggestion.

---@class cato.Options
---@field cmd string[]|function The server command (or an in-process server, see vim.lsp.ClientConfig).
---@field cmd_env table<string, string>? Extra environment of the server process.
---@field filetypes string[]? Filetypes to attach to; nil attaches to every file.
---@field root_markers string[] Files that mark a project's root.
---@field settings table The server's `cato` section.
---@field ghost_text cato.GhostText
---@field keymaps cato.Keymaps
---@field notify_status boolean Echo changes of the service's reachability.

---@type cato.Options
M.defaults = {
  cmd = { 'cato-lsp' },
  cmd_env = nil,
  filetypes = nil,
  root_markers = { 'cato.toml', '.git' },
  settings = {},
  ghost_text = {
    enabled = true,
    backend = 'auto',
    debounce_ms = 75,
    position = 'inline',
    hl_group = 'CatoGhostText',
  },
  keymaps = {
    accept = '<Tab>',
    accept_word = '<M-Right>',
    accept_line = '<M-Down>',
    dismiss = '<C-]>',
    trigger = '<M-\\>',
  },
  notify_status = true,
}

---@type cato.Options
M.options = vim.deepcopy(M.defaults)

---@param opts table
local function validate(opts)
  vim.validate('cmd', opts.cmd, { 'table', 'function' })
  vim.validate('filetypes', opts.filetypes, 'table', true)
  vim.validate('root_markers', opts.root_markers, 'table')
  vim.validate('settings', opts.settings, 'table')
  vim.validate('ghost_text', opts.ghost_text, 'table')
  vim.validate('keymaps', opts.keymaps, 'table')
  local g = opts.ghost_text
  vim.validate('ghost_text.debounce_ms', g.debounce_ms, 'number')
  if not vim.tbl_contains({ 'auto', 'native', 'extmark' }, g.backend) then
    error(("ghost_text.backend: expected 'auto', 'native' or 'extmark', got %q"):format(g.backend))
  end
  if not vim.tbl_contains({ 'inline', 'eol' }, g.position) then
    error(("ghost_text.position: expected 'inline' or 'eol', got %q"):format(g.position))
  end
  for name, key in pairs(opts.keymaps) do
    if key ~= false and type(key) ~= 'string' then
      error(('keymaps.%s: expected a key or false, got %s'):format(name, vim.inspect(key)))
    end
  end
end

--- Merges the user's options over the defaults; lists (cmd, filetypes, ...) are replaced.
---@param user table?
---@return cato.Options
function M.merge(user)
  local opts = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), user or {})
  for _, key in ipairs({ 'cmd', 'filetypes', 'root_markers' }) do
    if user and user[key] ~= nil then
      opts[key] = vim.deepcopy(user[key])
    end
  end
  if user and user.settings ~= nil then
    opts.settings = vim.deepcopy(user.settings)
  end
  validate(opts)
  return opts
end

--- The server's default `translateTargets`, used when the settings name none.
M.default_translate_targets = { 'python', 'javascript', 'typescript', 'go', 'rust', 'java' }

--- Target languages offered by :CatoTranslate.
---@return string[]
function M.translate_targets()
  local s = M.options.settings
  local targets = s.translateTargets or s.translate_targets
  return type(targets) == 'table' and targets or M.default_translate_targets
end

-- Settings keys whose values are JSON arrays; every other table is a JSON object.
local LIST_KEYS = { languages = true, translateTargets = true, translate_targets = true }

--- The settings as JSON-ready values: empty tables become objects (not arrays) except lists.
---@param value any
---@param key string?
---@return any
function M.to_json_object(value, key)
  if type(value) ~= 'table' then
    return value
  end
  if next(value) == nil then
    return LIST_KEYS[key] and {} or vim.empty_dict()
  end
  if vim.islist(value) then
    return value
  end
  local out = {}
  for k, v in pairs(value) do
    out[k] = M.to_json_object(v, k)
  end
  return out
end

return M
