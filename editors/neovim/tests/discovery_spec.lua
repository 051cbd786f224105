-- The default `cmd` finds `cato-lsp` where the install instructions put it, with nothing
-- on PATH: pipx's folder ($PIPX_BIN_DIR, else ~/.local/bin) and a workspace's .venv/bin
-- (which wins); and when it is nowhere, no client starts and the message says where it
-- looked and what to run. The executables found are real: scripts that start the server.
local T = require('harness')
local cato = require('cato')
local discovery = require('cato.discovery')

-- Resolved before PATH is narrowed below.
local python = vim.fn.exepath(os.getenv('CATO_NVIM_PYTHON') or 'python3')
local base = vim.fn.tempname()
local home = base .. '/home'
local pipx_bin = base .. '/pipx-bin'
local conf = base .. '/conf'
local marker = base .. '/started.txt'
for _, dir in ipairs({ home, pipx_bin, conf }) do
  vim.fn.mkdir(dir, 'p')
end
vim.fn.writefile({
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
}, conf .. '/cato.toml')

-- Nothing of the checkout or of the test's Python is in reach: a bare PATH, a fresh HOME,
-- and a working directory without .venv.
vim.env.PATH = '/usr/bin:/bin'
vim.env.HOME = home
vim.env.PIPX_BIN_DIR = nil
vim.fn.chdir(base)

--- An executable `cato-lsp` at `path` like the one pip or pipx writes (a Python script),
--- that also notes where it ran.
---@param path string
local function install_script(path)
  vim.fn.mkdir(vim.fs.dirname(path), 'p')
  vim.fn.writefile({
    '#!' .. python,
    'import sys',
    ('with open(%q, "a") as f: f.write(sys.argv[0] + "\\n")'):format(marker),
    'from cato_lsp.__main__ import main',
    'sys.exit(main())',
  }, path)
  assert(vim.uv.fs_chmod(path, tonumber('755', 8)))
end

---@return string[]
local function started()
  return vim.fn.filereadable(marker) == 1 and vim.fn.readfile(marker) or {}
end

--- Opens `path` as Python and waits for an initialized cato client on that buffer.
---@param path string
---@return vim.lsp.Client
local function open_and_attach(path)
  vim.fn.mkdir(vim.fs.dirname(path), 'p')
  vim.fn.writefile({ 'def total(values):', '    return sum(values)' }, path)
  vim.cmd.edit(vim.fn.fnameescape(path))
  vim.bo.filetype = 'python'
  return T.wait_for('cato-lsp to start for ' .. path, function()
    local c = cato.client()
    return c and c.initialized and c
  end, 60000)
end

local notified = {}
local notify = vim.notify
-- Recorded, not shown: an error message from an autocommand fails a headless run.
vim.notify = function(msg)
  notified[#notified + 1] = msg
end

cato.setup({
  filetypes = { 'python' },
  settings = { mode = 'embedded', config = conf .. '/cato.toml', debounceMs = 0 },
  ghost_text = { backend = 'extmark' },
})
vim.lsp.config('cato', { detached = false })

T.test('nothing installed: no client, and a message naming the places searched', function()
  T.eq(vim.fn.exepath('cato-lsp'), '', 'no cato-lsp on the test PATH')
  vim.fn.writefile({ 'x = 1' }, base .. '/lonely.py')
  vim.cmd.edit(vim.fn.fnameescape(base .. '/lonely.py'))
  vim.bo.filetype = 'python'
  local message = T.wait_for('the not-found message', function()
    return notified[1]
  end)
  T.ok(message:find(base .. '/.venv/bin/cato-lsp', 1, true), 'the .venv searched: ' .. message)
  T.ok(message:find('PATH', 1, true), 'PATH searched: ' .. message)
  T.ok(message:find(home .. '/.local/bin/cato-lsp', 1, true), '~/.local/bin: ' .. message)
  T.ok(message:find('pipx install', 1, true), 'a pipx command: ' .. message)
  T.ok(message:find('scripts/install', 1, true), 'the install script: ' .. message)
  T.sleep(200)
  T.eq(cato.client(), nil, 'no client started')
  vim.cmd('bwipeout!')
end)

T.test('candidates: workspace .venv, then PATH, then $PIPX_BIN_DIR and ~/.local/bin', function()
  local labels = vim.tbl_map(function(place)
    return place.label
  end, discovery.candidates('/w', { HOME = '/h', PIPX_BIN_DIR = '/p' }))
  T.eq(labels, {
    '/w/.venv/bin/cato-lsp',
    base .. '/.venv/bin/cato-lsp',
    'PATH',
    '/p/cato-lsp',
    '/h/.local/bin/cato-lsp',
  })
end)

T.test('a pipx-installed cato-lsp ($PIPX_BIN_DIR) starts and serves the buffer', function()
  install_script(pipx_bin .. '/cato-lsp')
  vim.env.PIPX_BIN_DIR = pipx_bin
  local client = open_and_attach(base .. '/plain/a.py')
  T.ok(client:supports_method('textDocument/inlineCompletion'), 'inline completion')
  T.eq(started(), { pipx_bin .. '/cato-lsp' })
end)

T.test(':checkhealth cato names the cato-lsp it found', function()
  vim.cmd('checkhealth cato')
  local report = table.concat(T.lines(), '\n')
  vim.cmd('bwipeout!')
  local expected = ('OK server command: cato-lsp (%s/cato-lsp)'):format(pipx_bin)
  T.ok(report:find(expected, 1, true), expected .. ' in\n' .. report)
  T.ok(report:find('OK cato_lsp', 1, true), 'cato_lsp importable in\n' .. report)
end)

--- Stops the cato clients and waits until they are gone.
local function stop_clients()
  local clients = vim.lsp.get_clients({ name = 'cato' })
  for _, client in ipairs(clients) do
    client:stop()
  end
  T.wait_for('the clients to stop', function()
    return vim.iter(clients):all(function(c)
      return c:is_stopped()
    end)
  end, 10000)
end

T.test("a workspace's .venv/bin/cato-lsp does not run until it is trusted", function()
  local project = base .. '/stranger'
  vim.fn.mkdir(project .. '/.git', 'p')
  local script = project .. '/.venv/bin/cato-lsp'
  install_script(script)
  local client = open_and_attach(project .. '/src/b.py')
  T.eq(client.root_dir, project)
  -- headless, nothing is asked: an unknown script is not trusted, pipx's runs instead
  T.eq(started(), { pipx_bin .. '/cato-lsp', pipx_bin .. '/cato-lsp' })
  local _, searched = discovery.find(project)
  T.ok(
    vim.tbl_contains(searched, script .. ' (not trusted: open it and run :trust)'),
    'the untrusted script named: ' .. table.concat(searched, ', ')
  )
  vim.cmd('bwipeout!')
  stop_clients()
end)

T.test("a trusted workspace's .venv/bin/cato-lsp is preferred there", function()
  local project = base .. '/project'
  vim.fn.mkdir(project .. '/.git', 'p')
  local script = project .. '/.venv/bin/cato-lsp'
  install_script(script)
  -- what `:trust` does in the script's buffer
  vim.cmd.edit(vim.fn.fnameescape(script))
  vim.secure.trust({ action = 'allow', bufnr = 0 })
  vim.cmd('bwipeout!')
  local client = open_and_attach(project .. '/src/b.py')
  T.eq(client.root_dir, project)
  T.eq(started(), { pipx_bin .. '/cato-lsp', pipx_bin .. '/cato-lsp', script })
  -- changed since it was trusted: asked about again, so not run headless
  vim.fn.writefile({ '# changed' }, script, 'a')
  local found = discovery.find(project)
  T.eq(found, pipx_bin .. '/cato-lsp')
end)

T.finally(function()
  vim.notify = notify
  local clients = vim.lsp.get_clients({ name = 'cato' })
  for _, client in ipairs(clients) do
    client:stop()
  end
  vim.wait(10000, function()
    return vim.iter(clients):all(function(c)
      return c:is_stopped()
    end)
  end, 50)
  vim.fn.delete(base, 'rf')
end)
