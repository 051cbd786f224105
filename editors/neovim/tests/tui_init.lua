-- The plugin in a real terminal UI (run by tests/tui under tmux) against the fake server.
-- `CatoTui` is what the driver calls through `nvim --server ... --remote-expr`, which
-- runs while the user is in insert mode without leaving it.
local here = vim.fs.dirname(vim.fs.abspath(debug.getinfo(1, 'S').source:sub(2)))
vim.opt.runtimepath:prepend(vim.fs.dirname(here))
package.path = ('%s/?.lua;%s'):format(here, package.path)
vim.o.swapfile = false
vim.o.laststatus = 2
vim.o.showmode = true
vim.o.statusline = "%f %{v:lua.require'cato'.statusline()}"
vim.cmd('filetype on')
vim.cmd('runtime plugin/cato.lua')

local fake = require('fake_server')
local server = fake.new()
local cato = require('cato')
cato.setup({ cmd = server.cmd, ghost_text = { backend = 'extmark' }, settings = {} })

local OUTAGE = 'CATO: the orchestrator cannot be reached (cannot reach http://127.0.0.1:9: '
  .. 'Cannot connect to host 127.0.0.1:9 ssl:default [Connect call failed (127.0.0.1, 9)])'

---@param method string
---@param params table
local function from_server(method, params)
  server.dispatchers.notification(method, params)
end

CatoTui = {
  ready = function()
    local client = cato.client(0)
    return client ~= nil and client.initialized and 1 or 0
  end,
  outage = function()
    from_server('window/showMessage', { type = 1, message = OUTAGE })
    from_server('cato/status', { reachable = false, state = 'unreachable', detail = 'refused' })
    return 1
  end,
  recover = function()
    from_server('cato/status', { reachable = true, state = 'ready', replicasReady = 2 })
    return 1
  end,
  line = function()
    return vim.api.nvim_get_current_line()
  end,
  mode = function()
    return vim.api.nvim_get_mode().mode
  end,
}

-- The file on the command line was loaded before this ran: detect its type now.
vim.cmd('filetype detect')
