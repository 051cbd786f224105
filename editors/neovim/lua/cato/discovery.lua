--- Where `cato-lsp` lives when `cmd` is left at its default: the workspace's `.venv`
--- (what `scripts/install` makes), then PATH, then pipx's folder (`$PIPX_BIN_DIR`, else
--- `~/.local/bin`), so a server installed any of the documented ways is found.
local M = {}

M.SCRIPT = 'cato-lsp'

M.INSTALL_HINT = 'install it with `pipx install <a CATO checkout or its wheel>` (puts cato-lsp in '
  .. '~/.local/bin), or run `scripts/install` in a CATO checkout (makes .venv), or set `cmd` '
  .. "in require('cato').setup()"

---@param path string
---@return boolean
local function executable(path)
  local stat = vim.uv.fs_stat(path)
  return stat ~= nil and stat.type == 'file' and vim.uv.fs_access(path, 'X') == true
end

--- The places searched, in order: { path = file or nil, label = what it is }.
---@param root string? the workspace root (from root_markers)
---@param env table<string, string>? defaults to the process environment
---@return { path: string?, label: string }[]
function M.candidates(root, env)
  env = env or vim.fn.environ()
  local places = {}
  local seen = {}
  local function add(path, label)
    if path and not seen[path] then
      seen[path] = true
      places[#places + 1] = { path = path, label = label or path }
    end
  end
  local dirs = { root or '', vim.fn.getcwd() }
  for i = 1, #dirs do
    local dir = dirs[i]
    if dir ~= '' then
      add(vim.fs.joinpath(dir, '.venv', 'bin', M.SCRIPT))
    end
  end
  places[#places + 1] = { path = nil, label = 'PATH' }
  if env.PIPX_BIN_DIR and env.PIPX_BIN_DIR ~= '' then
    add(vim.fs.joinpath(env.PIPX_BIN_DIR, M.SCRIPT))
  end
  if env.HOME and env.HOME ~= '' then
    add(vim.fs.joinpath(env.HOME, '.local', 'bin', M.SCRIPT))
  end
  return places
end

--- The first executable `cato-lsp`, or nil and the list of places searched.
---@param root string?
---@param env table<string, string>?
---@return string? path
---@return string[] searched
function M.find(root, env)
  local searched = {}
  for _, place in ipairs(M.candidates(root, env)) do
    if place.path == nil then
      local found = vim.fn.exepath(M.SCRIPT)
      if found ~= '' then
        return found, searched
      end
    elseif executable(place.path) then
      return place.path, searched
    end
    searched[#searched + 1] = place.label
  end
  return nil, searched
end

--- The message shown when nothing was found.
---@param searched string[]
---@return string
function M.not_found(searched)
  return ('cato: %s not found (searched %s); %s'):format(
    M.SCRIPT,
    table.concat(searched, ', '),
    M.INSTALL_HINT
  )
end

--- Whether `cmd` asks for the server by its bare name (the default), so it is searched for.
---@param cmd any
---@return boolean
function M.searches(cmd)
  return type(cmd) == 'table' and cmd[1] == M.SCRIPT
end

return M
