--- :checkhealth cato: the server command, its Python, the client, and the remote service.
local M = {}

local health = vim.health
local discovery = require('cato.discovery')

local INSTALL_HINT = discovery.INSTALL_HINT

-- Prints the Python version and the cato_lsp version; exits non-zero when cato_lsp is missing.
local PROBE = [[
import sys
print('%d.%d.%d' % sys.version_info[:3])
import cato_lsp
print(cato_lsp.__version__)
]]

-- GET url (token from the environment, never the command line); prints the HTTP status.
local HTTP_GET = [[
import os, sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[1])
token = os.environ.get('CATO_TOKEN')
if token:
    req.add_header('Authorization', 'Bearer ' + token)
try:
    with urllib.request.urlopen(req, timeout=5) as resp:
        print(resp.status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except Exception as exc:
    print('error', exc)
]]

---@param exe string the server command's executable, resolved
---@return string? python The interpreter that runs the server command.
local function interpreter(exe)
  if vim.fs.basename(exe):match('^python') then
    return exe
  end
  local file = io.open(exe, 'r')
  local first = file and file:read('*l') or ''
  if file then
    file:close()
  end
  local shebang = first:match('^#!%s*(.-)%s*$')
  if not shebang then
    return nil
  end
  local env_target = shebang:match('^%S*/env%s+(%S+)')
  local python = env_target and vim.fn.exepath(env_target) or shebang:match('^(%S+)')
  -- A shell wrapper (or anything else) is not the server's Python.
  if not python or python == '' or not vim.fs.basename(python):match('^python') then
    return nil
  end
  return python
end

---@param argv string[]
---@param env table<string, string>?
---@return vim.SystemCompleted
local function run(argv, env)
  local ok, proc = pcall(vim.system, argv, { text = true, env = env })
  if not ok then
    return { code = -1, signal = 0, stdout = '', stderr = tostring(proc) }
  end
  return proc:wait(15000)
end

---@param opts cato.Options
---@return string? python
local function check_server(opts)
  health.start('cato: language server')
  local cmd = opts.cmd
  if type(cmd) ~= 'table' then
    health.info('the server is an in-process function; nothing to check')
    return nil
  end
  local exe = vim.fn.exepath(cmd[1])
  if discovery.searches(cmd) then
    local found, searched = discovery.find(vim.fs.root(0, opts.root_markers))
    if not found then
      health.error(
        ('`%s` not found (searched %s)'):format(cmd[1], table.concat(searched, ', ')),
        { INSTALL_HINT }
      )
      return nil
    end
    exe = found
  elseif exe == '' then
    health.error(('`%s` is not on PATH'):format(cmd[1]), { INSTALL_HINT })
    return nil
  end
  health.ok(('server command: %s (%s)'):format(table.concat(cmd, ' '), exe))
  local python = interpreter(exe)
  if not python then
    health.warn('cannot tell which Python runs the server; skipped the version check')
    return nil
  end
  local probe = run({ python, '-c', PROBE })
  local lines = vim.split(vim.trim(probe.stdout or ''), '\n')
  local version = lines[1] or '?'
  local major, minor = version:match('^(%d+)%.(%d+)')
  if not major or tonumber(major) < 3 or (tonumber(major) == 3 and tonumber(minor) < 11) then
    health.error(('Python %s at %s: CATO needs 3.11 or newer'):format(version, python))
  else
    health.ok(('Python %s (%s)'):format(version, python))
  end
  if probe.code ~= 0 then
    health.error(
      'this Python cannot import cato_lsp',
      { INSTALL_HINT, vim.trim(probe.stderr or '') }
    )
  elseif lines[2] then
    health.ok('cato_lsp ' .. lines[2])
  end
  return python
end

local function check_client()
  health.start('cato: client')
  if vim.fn.has('nvim-0.11') == 0 then
    health.error('Neovim 0.11 or newer is needed (vim.lsp.config / vim.lsp.enable)')
  end
  local cato = require('cato')
  if not vim.lsp.config[cato.name] then
    health.warn("require('cato').setup() has not been called")
    return
  end
  if cato.backend == 'native' then
    health.ok('inline suggestions: vim.lsp.inline_completion')
  elseif cato.backend == 'extmark' then
    health.ok('inline suggestions: extmark ghost text (Neovim < 0.12)')
  else
    health.info('inline suggestions are disabled (ghost_text.enabled = false)')
  end
  local clients = vim.lsp.get_clients({ name = cato.name })
  if #clients == 0 then
    health.info('no cato-lsp client is running yet (it starts when a file is opened)')
  end
  for _, client in ipairs(clients) do
    local inline = client:supports_method('textDocument/inlineCompletion')
    local msg = ('client %d running, %d buffer(s), inline completion %s'):format(
      client.id,
      vim.tbl_count(client.attached_buffers),
      inline and 'advertised' or 'NOT advertised'
    )
    if inline then
      health.ok(msg)
    else
      health.warn(msg)
    end
  end
  local last = require('cato.status').last
  if last then
    health.info('last status from the server:')
    for _, line in ipairs(require('cato.status').summary(last)) do
      health.info(vim.trim(line))
    end
  end
end

---@param settings table
---@param python string?
local function check_remote(settings, python)
  health.start('cato: orchestrator')
  if settings.mode ~= 'remote' then
    local where = settings.config and ('config ' .. settings.config) or 'the built-in default'
    health.ok('embedded mode (' .. where .. '): the orchestrator runs inside the server')
    return
  end
  local url = type(settings.url) == 'string' and settings.url:gsub('/+$', '') or nil
  if not url then
    health.error("mode 'remote' needs settings.url (the address of `cato serve`)")
    return
  end
  if not python then
    health.warn('no Python found to reach ' .. url)
    return
  end
  local env = settings.token and { CATO_TOKEN = tostring(settings.token) } or nil
  local alive = vim.trim(run({ python, '-c', HTTP_GET, url .. '/health' }).stdout or '')
  if alive ~= '200' then
    health.error(('%s/health: %s'):format(url, alive ~= '' and alive or 'no answer'), {
      'start the service with `cato serve`, or check settings.url',
    })
    return
  end
  health.ok(url .. ' is reachable')
  local answer = vim.trim(run({ python, '-c', HTTP_GET, url .. '/v1/status' }, env).stdout or '')
  if answer == '200' and settings.token then
    health.ok('the token is accepted')
  elseif answer == '200' then
    health.ok('the service asks for no token (none is set)')
  elseif answer == '401' then
    health.error('the service refused the token (401)', { 'check settings.token' })
  else
    health.warn(('%s/v1/status answered %s'):format(url, answer))
  end
end

-- What `cato doctor` checks beyond the above (its venv, vLLM and its build, GPUs).
local DOCTOR_SHOWN = { environment = true, vllm = true, gpus = true }

--- `cato doctor --json` with the server's Python: one report for the terminal and here.
---@param python string?
local function check_doctor(python)
  health.start('cato: doctor (the environment of the server)')
  if not python then
    health.info('no Python found for the server; run `cato doctor` in a terminal')
    return
  end
  local argv = { python, '-m', 'orchestrator.cli', 'doctor', '--json', '--port', '0' }
  local ok, proc = pcall(vim.system, argv, { text = true })
  -- Importing vLLM to name its build can take a while.
  local done = ok and proc:wait(120000) or { code = -1, stdout = '', stderr = tostring(proc) }
  local decoded, checks = pcall(vim.json.decode, done.stdout or '')
  if not decoded or type(checks) ~= 'table' then
    health.warn('`cato doctor` gave no report', { vim.trim(done.stderr or '') })
    return
  end
  for _, c in ipairs(checks) do
    if DOCTOR_SHOWN[c.name] then
      local text = ('%s: %s'):format(c.name, c.detail)
      local advice = (c.fix or '') ~= '' and { c.fix } or nil
      if c.level == 'ok' then
        health.ok(text)
      elseif c.level == 'warn' then
        health.warn(text, advice)
      else
        health.error(text, advice)
      end
    end
  end
end

function M.check()
  local opts = require('cato.config').options
  local python = check_server(opts)
  check_client()
  check_remote(opts.settings, python)
  check_doctor(python)
end

return M
