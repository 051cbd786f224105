--- CATO for Neovim: the `cato-lsp` client, inline suggestions and the assistant's commands.
---
--- `setup()` registers the server with vim.lsp.config/vim.lsp.enable (Neovim 0.11+). Inline
--- suggestions use vim.lsp.inline_completion where Neovim has it (0.12+) and extmarks
--- otherwise; summarize, translate and generate are server commands whose edits arrive as
--- `workspace/applyEdit` and `window/showDocument`, which Neovim's own handlers apply.
local M = {}

local api = vim.api
local config = require('cato.config')
local discovery = require('cato.discovery')
local ghost = require('cato.ghost')
local keymaps = require('cato.keymaps')
local messages = require('cato.messages')
local status = require('cato.status')

M.name = 'cato'

local METHOD_INLINE = 'textDocument/inlineCompletion'
local NATIVE_NS = 'nvim.lsp.inline_completion'

--- Which inline-completion implementation runs: 'native', 'extmark' or nil when off.
---@type 'native'|'extmark'|nil
M.backend = nil

---@return boolean
local function has_native()
  local ic = vim.lsp.inline_completion
  return type(ic) == 'table' and type(ic.enable) == 'function' and type(ic.get) == 'function'
end

---@param opts cato.Options
---@return 'native'|'extmark'|nil
local function pick_backend(opts)
  local g = opts.ghost_text
  if not g.enabled then
    return nil
  end
  if g.backend == 'extmark' then
    return 'extmark'
  end
  if g.backend == 'native' and not has_native() then
    vim.notify_once(
      'cato: vim.lsp.inline_completion needs Neovim 0.12; drawing suggestions with extmarks',
      vim.log.levels.WARN
    )
  end
  return has_native() and 'native' or 'extmark'
end

--- The cato client attached to a buffer.
---@param bufnr integer?
---@return vim.lsp.Client?
function M.client(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  return vim.lsp.get_clients({ bufnr = bufnr, name = M.name })[1]
end

---@param bufnr integer
---@return vim.lsp.Client?
local function inline_client(bufnr)
  local client = M.client(bufnr)
  if client and client:supports_method(METHOD_INLINE, bufnr) then
    return client
  end
  return nil
end

---@param bufnr integer
---@return boolean
local function native_visible(bufnr)
  local ns = api.nvim_get_namespaces()[NATIVE_NS]
  return ns ~= nil and #api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { limit = 1 }) > 0
end

--- Whether a suggestion is shown in the current buffer.
---@return boolean
function M.is_visible()
  if M.backend == 'native' then
    return native_visible(api.nvim_get_current_buf())
  end
  return M.backend == 'extmark' and ghost.visible()
end

--- The suggestion shown by the extmark backend (nil otherwise).
---@return { text: string, shown: string, row: integer, col: integer }?
function M.suggestion()
  return M.backend == 'extmark' and ghost.current() or nil
end

--- Accepts the suggestion shown; `unit` 'word' or 'line' accepts only its start.
---@param unit ('all'|'word'|'line')?
---@return boolean accepted
function M.accept(unit)
  if M.backend == 'native' then
    return vim.lsp.inline_completion.get() and true or false
  end
  return M.backend == 'extmark' and ghost.accept(unit)
end

--- Hides the suggestion shown.
function M.dismiss()
  if M.backend == 'extmark' then
    ghost.reset()
  elseif M.backend == 'native' then
    local ns = api.nvim_get_namespaces()[NATIVE_NS]
    if ns then
      api.nvim_buf_clear_namespace(0, ns, 0, -1)
    end
  end
end

--- Asks for a suggestion at the cursor now (extmark backend; the native one asks by itself).
function M.trigger()
  if M.backend == 'extmark' then
    ghost.trigger()
  end
end

-- ---------------------------------------------------------------------------- commands

--- Servers started and not yet initialized (vim.lsp lists a client only once it is).
local initializing = 0

--- Whether a cato client is on its way to this buffer (started, not attached yet).
---@param bufnr integer
---@return boolean
local function starting_for(bufnr)
  local filetypes = config.options and config.options.filetypes
  local ft = vim.bo[bufnr].filetype
  local wanted = ft ~= '' and (filetypes == nil or vim.tbl_contains(filetypes, ft))
  return wanted and initializing > 0
end

---@param bufnr integer
---@return vim.lsp.Client?
local function client_or_warn(bufnr)
  local client = M.client(bufnr)
  if client and client.initialized then
    return client
  end
  if client or starting_for(bufnr) then
    vim.notify('cato: cato-lsp is starting; try again in a moment', vim.log.levels.WARN)
  else
    vim.notify(
      'cato: cato-lsp is not attached to this buffer (see :checkhealth cato)',
      vim.log.levels.ERROR
    )
  end
  return nil
end

--- InvalidParams: the request made no sense where it was made ("nothing to summarize").
local INVALID_PARAMS = -32602

--- Runs a server command for a buffer; `on_result(err, result)` gets the answer.
---@param command string
---@param arguments any[]
---@param bufnr integer?
---@param on_result fun(err: lsp.ResponseError?, result: any)?
---@return boolean sent
function M.execute(command, arguments, bufnr, on_result)
  bufnr = bufnr or api.nvim_get_current_buf()
  local client = client_or_warn(bufnr)
  if not client then
    return false
  end
  local ok = client:request('workspace/executeCommand', {
    command = command,
    arguments = arguments,
  }, function(err, result)
    if err then
      -- a user mistake is a warning; a failure of the service an error
      local level = err.code == INVALID_PARAMS and vim.log.levels.WARN or vim.log.levels.ERROR
      vim.notify(('cato: %s: %s'):format(command, err.message or vim.inspect(err)), level)
    end
    if on_result then
      on_result(err, result)
    end
  end, bufnr)
  return ok
end

--- The LSP range of lines `line1`..`line2` (1-based, whole lines), or of the cursor.
---@param client vim.lsp.Client
---@param bufnr integer
---@param line1 integer?
---@param line2 integer?
---@return lsp.Range
local function target_range(client, bufnr, line1, line2)
  if line1 and line2 then
    local last = api.nvim_buf_get_lines(bufnr, line2 - 1, line2, false)[1] or ''
    return {
      start = { line = line1 - 1, character = 0 },
      ['end'] = { line = line2 - 1, character = vim.str_utfindex(last, client.offset_encoding) },
    }
  end
  local position = vim.lsp.util.make_position_params(0, client.offset_encoding).position
  return { start = position, ['end'] = position }
end

--- Runs `command` on the lines `line1`..`line2`, or at the cursor.
---@param command string
---@param line1 integer?
---@param line2 integer?
---@param on_result fun(err: lsp.ResponseError?, result: any)?
local function on_range(command, line1, line2, on_result)
  local bufnr = api.nvim_get_current_buf()
  local client = client_or_warn(bufnr)
  if not client then
    return
  end
  local args =
    { uri = vim.uri_from_bufnr(bufnr), range = target_range(client, bufnr, line1, line2) }
  M.execute(command, { args }, bufnr, on_result)
end

--- Translates the current file into `language`; the server creates the new file and opens it.
---@param language string?
---@param on_result fun(err: lsp.ResponseError?, result: any)?
function M.translate(language, on_result)
  local bufnr = api.nvim_get_current_buf()
  if not language or language == '' then
    vim.ui.select(config.translate_targets(), { prompt = 'Translate to' }, function(choice)
      if choice then
        M.translate(choice, on_result)
      end
    end)
    return
  end
  local args = { uri = vim.uri_from_bufnr(bufnr), targetLanguage = language }
  M.execute('cato.translateFile', { args }, bufnr, on_result)
end

--- Writes a docstring or comment for the enclosing function, or for lines `line1`..`line2`.
---@param line1 integer? 1-based first line of a range
---@param line2 integer? 1-based last line of a range
---@param on_result fun(err: lsp.ResponseError?, result: any)?
function M.summarize(line1, line2, on_result)
  on_range('cato.summarize', line1, line2, on_result)
end

--- Writes the code that the comment at the cursor (or lines `line1`..`line2`) describes.
---@param line1 integer?
---@param line2 integer?
---@param on_result fun(err: lsp.ResponseError?, result: any)?
function M.generate(line1, line2, on_result)
  on_range('cato.generate', line1, line2, on_result)
end

--- Shows the service's state (orchestrator, replicas, latency, SLA attainment); with
--- `on_result`, hands the answer over instead of showing it.
---@param on_result fun(err: lsp.ResponseError?, result: any)?
function M.status(on_result)
  M.execute('cato.status', {}, nil, function(err, result)
    if not err and not on_result then
      local lines = { 'CATO status' }
      vim.list_extend(
        lines,
        status.summary(type(result) == 'table' and result or { result = result })
      )
      api.nvim_echo({ { table.concat(lines, '\n') } }, true, {})
    end
    if on_result then
      on_result(err, result)
    end
  end)
end

--- A short text for 'statusline', e.g. "CATO 2 ready 180ms SLA 98%".
---@return string
function M.statusline()
  return status.statusline()
end

-- ------------------------------------------------------------------------------- setup

--- Long tasks in flight: progress token -> title.
---@type table<string|integer, string>
M.progress = {}

--- Cancels the long tasks in flight (translation, summary) through their progress tokens.
function M.cancel()
  local client = M.client()
  if not client then
    return
  end
  for token in pairs(M.progress) do
    client:notify('window/workDoneProgress/cancel', { token = token })
  end
end

---@param args vim.api.keyset.create_autocmd.callback_args
local function on_progress(args)
  local client = vim.lsp.get_client_by_id(args.data.client_id)
  if not client or client.name ~= M.name then
    return
  end
  local params = args.data.params
  local value = params.value or {}
  if value.kind == 'end' then
    M.progress[params.token] = nil
  elseif value.kind == 'begin' then
    M.progress[params.token] = value.title or 'CATO'
  end
  local title = M.progress[params.token] or value.title or 'CATO'
  local pct = value.percentage and (' %d%%'):format(value.percentage) or ''
  local msg = value.message and (' ' .. value.message) or ''
  api.nvim_echo({ { ('%s%s%s'):format(title, pct, msg) } }, false, {})
end

---@param args vim.api.keyset.create_autocmd.callback_args
local function on_attach(args)
  local client = vim.lsp.get_client_by_id(args.data.client_id)
  if not client or client.name ~= M.name then
    return
  end
  if M.backend == 'native' then
    vim.lsp.inline_completion.enable(true, { bufnr = args.buf })
  elseif M.backend == 'extmark' and client:supports_method(METHOD_INLINE, args.buf) then
    ghost.attach(args.buf)
  end
end

---@param args vim.api.keyset.create_autocmd.callback_args
local function on_detach(args)
  local client = vim.lsp.get_client_by_id(args.data.client_id)
  if client and client.name == M.name then
    ghost.detach(args.buf)
  end
end

--- The server command and root_dir: a bare `cato-lsp` (the default) is searched for in
--- the workspace's .venv, PATH and pipx's folder; when it is nowhere, the client is not
--- started and the message says where it looked and how to install it.
--- (root_dir is always a function, so that a later setup() replaces an earlier one.)
---@param opts cato.Options
---@return string[]|function cmd
---@return function root_dir
local function server_command(opts)
  local searches = discovery.searches(opts.cmd)
  local function root_dir(bufnr, on_dir)
    local root = vim.fs.root(bufnr, opts.root_markers)
    if not searches then
      on_dir(root)
      return
    end
    local found, searched = discovery.find(root)
    if found then
      on_dir(root)
    else
      vim.notify_once(discovery.not_found(searched), vim.log.levels.ERROR)
    end
  end
  if not searches then
    return opts.cmd, root_dir
  end
  local args = vim.list_slice(opts.cmd --[[@as string[] ]], 2)
  local function cmd(dispatchers, cfg)
    local exe = discovery.find(cfg.root_dir) or discovery.SCRIPT
    return vim.lsp.rpc.start(vim.list_extend({ exe }, args), dispatchers, {
      cwd = cfg.cmd_cwd,
      env = cfg.cmd_env,
      detached = cfg.detached,
    })
  end
  return cmd, root_dir
end

---@param opts cato.Options
local function register_client(opts)
  local settings = config.to_json_object(opts.settings)
  local cmd, root_dir = server_command(opts)
  vim.lsp.config[M.name] = {
    cmd = cmd,
    cmd_env = opts.cmd_env,
    filetypes = opts.filetypes,
    root_markers = opts.root_markers,
    root_dir = root_dir,
    init_options = settings,
    settings = { cato = settings },
    capabilities = {
      textDocument = { inlineCompletion = { dynamicRegistration = false } },
      window = { workDoneProgress = true, showDocument = { support = true } },
    },
    before_init = function()
      initializing = initializing + 1
    end,
    on_init = function()
      initializing = math.max(0, initializing - 1)
    end,
    on_exit = function(_, _, client_id)
      local client = vim.lsp.get_client_by_id(client_id)
      if client and not client.initialized then
        initializing = math.max(0, initializing - 1)
      end
    end,
    handlers = {
      ['cato/status'] = status.on_notification,
      ['window/showMessage'] = messages.on_show_message,
    },
  }
  -- Running clients pick up new settings without a restart.
  for _, client in ipairs(vim.lsp.get_clients({ name = M.name })) do
    client.settings = { cato = settings }
    client:notify('workspace/didChangeConfiguration', { settings = { cato = settings } })
  end
  vim.lsp.enable(M.name)
end

---@param opts cato.Options
local function set_keymaps(opts)
  keymaps.unmap_all()
  if not M.backend then
    return
  end
  ---@param lua string
  ---@return fun(): string?
  local function when_visible(lua)
    local keys = keymaps.cmd(lua)
    return function()
      return M.is_visible() and keys or nil
    end
  end
  local k = opts.keymaps
  local accept = when_visible("require('cato').accept()")
  if M.backend == 'native' then
    -- vim.lsp.inline_completion.get() applies the item on its own (scheduled, so it may
    -- run here in the expression) and says whether there was one.
    accept = function()
      return vim.lsp.inline_completion.get() and '' or nil
    end
  end
  keymaps.map(k.accept, accept, 'accept the suggestion')
  if M.backend == 'extmark' then
    keymaps.map(k.accept_word, when_visible("require('cato').accept('word')"), 'accept a word')
    keymaps.map(k.accept_line, when_visible("require('cato').accept('line')"), 'accept a line')
  end
  keymaps.map(k.dismiss, when_visible("require('cato').dismiss()"), 'dismiss the suggestion')
  if M.backend == 'extmark' then
    local trigger = keymaps.cmd("require('cato').trigger()")
    keymaps.map(k.trigger, function()
      return trigger
    end, 'ask for a suggestion')
  end
end

local function set_highlights()
  api.nvim_set_hl(0, 'CatoGhostText', { link = 'Comment', default = true })
end

--- Configures and enables the client; safe to call again with new options.
---@param user table?
function M.setup(user)
  local opts = config.merge(user)
  config.options = opts
  M.backend = pick_backend(opts)
  ghost.configure(opts.ghost_text, inline_client)
  status.configure(opts.notify_status)
  set_highlights()
  local group = api.nvim_create_augroup('cato', { clear = true })
  api.nvim_create_autocmd('ColorScheme', { group = group, callback = set_highlights })
  api.nvim_create_autocmd('LspAttach', { group = group, callback = on_attach })
  api.nvim_create_autocmd('LspDetach', { group = group, callback = on_detach })
  api.nvim_create_autocmd('LspProgress', { group = group, callback = on_progress })
  set_keymaps(opts)
  ghost.detach_all()
  register_client(opts)
  for _, client in ipairs(vim.lsp.get_clients({ name = M.name })) do
    for bufnr in pairs(client.attached_buffers) do
      on_attach({ buf = bufnr, data = { client_id = client.id } })
    end
  end
end

return M
