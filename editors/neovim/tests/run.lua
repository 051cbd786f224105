-- Entry point of the headless tests: nvim --headless -u NONE -i NONE -n -c "luafile tests/run.lua"
-- CATO_NVIM_SPECS: comma-separated spec names (default "unit"); CATO_NVIM_TIMEOUT_S: limit.
local here = vim.fs.dirname(vim.fs.abspath(debug.getinfo(1, 'S').source:sub(2)))
local root = vim.fs.dirname(here)
vim.opt.runtimepath:prepend(root)
package.path = ('%s/?.lua;%s'):format(here, package.path)
vim.cmd('filetype on')
vim.o.swapfile = false
vim.o.more = false
vim.o.showmode = false
vim.o.shortmess = vim.o.shortmess .. 'I'
vim.cmd('runtime plugin/cato.lua')

local T = require('harness')
local specs = vim.split(os.getenv('CATO_NVIM_SPECS') or 'unit', ',', { trimempty = true })
for _, name in ipairs(specs) do
  dofile(('%s/%s_spec.lua'):format(here, name))
end
T.run(tonumber(os.getenv('CATO_NVIM_TIMEOUT_S') or '') or 120)
