-- Remote mode: the real language server talks to a real `cato serve` (one emulated replica)
-- with a bearer token; :checkhealth reaches the service, suggestions flow through it, and
-- losing the service shows in the status line.
local T = require('harness')
local cato = require('cato')
local ghost = require('cato.ghost')

local api = vim.api
local python = os.getenv('CATO_NVIM_PYTHON') or 'python3'
local TOKEN = 'nvim-test-token'

local dir = vim.fn.tempname()
vim.fn.mkdir(dir, 'p')

---@return integer A port that was free a moment ago.
local function free_port()
  local tcp = assert(vim.uv.new_tcp())
  tcp:bind('127.0.0.1', 0)
  local port = tcp:getsockname().port
  tcp:close()
  return port
end

local port = free_port()
local url = ('http://127.0.0.1:%d'):format(port)
local config_path = dir .. '/serve.toml'
vim.fn.writefile({
  '[[server.users]]',
  'name = "dev"',
  ('token_sha256 = "%s"'):format(vim.fn.sha256(TOKEN)),
  '',
  '[[models]]',
  'name = "tiny"',
  'engine = "emulated"',
  'profile = "tiny@cpu"',
  'speed = 50.0',
  'min_replicas = 1',
  'max_replicas = 1',
  '',
  '[provisioner]',
  'policy = "fixed"',
}, config_path)

local service_log = {}
local service = vim.system(
  { python, '-m', 'orchestrator.cli', 'serve', '--config', config_path, '--port', tostring(port) },
  {
    text = true,
    stderr = function(_, data)
      service_log[#service_log + 1] = data
    end,
  }
)

---@param settings table
local function setup(settings)
  cato.setup({
    cmd = { python, '-m', 'cato_lsp' },
    filetypes = { 'python' },
    settings = settings,
    ghost_text = { backend = 'extmark', debounce_ms = 30 },
  })
  vim.lsp.config('cato', { detached = false })
end

---@return string
local function health_report()
  vim.cmd('checkhealth cato')
  local report = table.concat(T.lines(), '\n')
  vim.cmd('bwipeout!')
  return report
end

setup({ mode = 'remote', url = url, token = TOKEN, debounceMs = 0 })

T.test('cato serve starts', function()
  T.wait_for('the service to be ready', function()
    return table.concat(service_log):find('ready: every model', 1, true)
  end, 60000)
end)

T.test(':checkhealth cato reaches the service and its token is accepted', function()
  local report = health_report()
  T.ok(report:find(url .. ' is reachable', 1, true), 'reachable in\n' .. report)
  T.ok(report:find('OK the token is accepted', 1, true), 'token accepted in\n' .. report)
  T.ok(not report:find(TOKEN, 1, true), 'the token is not printed')
end)

T.test(':checkhealth cato reports a refused token', function()
  setup({ mode = 'remote', url = url, token = 'wrong-token' })
  local report = health_report()
  T.ok(report:find('refused the token (401)', 1, true), '401 in\n' .. report)
  setup({ mode = 'remote', url = url, token = TOKEN, debounceMs = 0 })
end)

T.test('suggestions come through cato serve and can be accepted', function()
  local path = dir .. '/remote.py'
  vim.fn.writefile({ 'def mean(values):', '    total = sum(values)', '    ' }, path)
  vim.cmd.edit(vim.fn.fnameescape(path))
  T.wait_for('cato-lsp to start', function()
    local c = cato.client()
    return c and c.initialized
  end, 30000)
  api.nvim_win_set_cursor(0, { 3, 4 })
  T.feed('A')
  local suggestion = T.type_until('return total', ghost.busy, cato.suggestion, 60000)
  T.ok(suggestion, 'a suggestion while typing')
  local before = api.nvim_get_current_line()
  T.feed('<Tab>')
  local lines = vim.split(suggestion.shown, '\n', { plain = true })
  T.eq(T.lines()[3], before .. lines[1], 'the first line of the suggestion inserted')
  T.feed('<Esc>')
end)

T.test('a lost service shows in the status line', function()
  service:kill(15)
  service:wait(20000)
  T.feed('o')
  T.feed('x')
  T.wait_for('an unreachable status', function()
    local last = require('cato.status').last
    return last and last.reachable == false
  end, 30000)
  T.eq(cato.statusline(), 'CATO ✗')
  T.feed('<Esc>')
end)

T.finally(function()
  if not service:is_closing() then
    service:kill(15)
  end
  service:wait(20000)
  local clients = vim.lsp.get_clients({ name = 'cato' })
  for _, client in ipairs(clients) do
    client:stop()
  end
  vim.wait(10000, function()
    return vim.iter(clients):all(function(c)
      return c:is_stopped()
    end)
  end, 50)
end)
