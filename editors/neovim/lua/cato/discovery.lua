--- Where `cato-lsp` lives when `cmd` is left at its default: the workspace's `.venv`
--- (what `scripts/install` makes), then PATH, then pipx's folder (`$PIPX_BIN_DIR`, else
--- `~/.local/bin`), so a server installed any of the documented ways is found.
---
--- A workspace's `.venv` is a program that came with the folder: opening a project
--- someone else made must not run it unasked. Neovim's trust database (the one
--- 'exrc' uses) decides: `vim.secure.read` asks once (view, deny, allow) and keeps the
--- answer with the file's hash, so a script that changes is asked about again. Without
--- a UI (headless), an unknown file is not trusted.
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

--- The places searched, in order: { path = file or nil, label = what it is, workspace =
--- whether it came with the workspace (its `.venv`) }.
---@param root string? the workspace root (from root_markers)
---@param env table<string, string>? defaults to the process environment
---@return { path: string?, label: string, workspace: boolean? }[]
function M.candidates(root, env)
  env = env or vim.fn.environ()
  local places = {}
  local seen = {}
  local function add(path, workspace)
    if path and not seen[path] then
      seen[path] = true
      places[#places + 1] = { path = path, label = path, workspace = workspace }
    end
  end
  local dirs = { root or '', vim.fn.getcwd() }
  for i = 1, #dirs do
    local dir = dirs[i]
    if dir ~= '' then
      add(vim.fs.joinpath(dir, '.venv', 'bin', M.SCRIPT), true)
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

--- Workspace scripts found not trusted, with the trust database's state then: not
--- asked about again (an answer of "ignore" is not kept in the database, and the
--- server's root and command each look) until the database changes, as `:trust` does.
---@type table<string, string>
M.untrusted = {}

--- The trust database's size and modification time ('' while there is none).
---@return string
local function trust_stamp()
  local stat = vim.uv.fs_stat(vim.fs.joinpath(vim.fn.stdpath('state'), 'trust'))
  if not stat then
    return ''
  end
  return ('%d:%d.%d'):format(stat.size, stat.mtime.sec, stat.mtime.nsec)
end

--- Whether the trust database allows running `path` (asking, where there is a UI).
---@param path string
---@return boolean
function M.trusted(path)
  local stamp = trust_stamp()
  if M.untrusted[path] == stamp then
    return false
  end
  local ok, content = pcall(vim.secure.read, path)
  if ok and content ~= nil then
    M.untrusted[path] = nil
    return true
  end
  M.untrusted[path] = trust_stamp()
  return false
end

--- The first executable `cato-lsp` (a workspace's only once trusted), or nil and the
--- places searched (an untrusted workspace script among them, saying so).
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
      searched[#searched + 1] = place.label
    elseif not executable(place.path) then
      searched[#searched + 1] = place.label
    elseif not place.workspace or M.trusted(place.path) then
      return place.path, searched
    else
      searched[#searched + 1] = place.label .. ' (not trusted: open it and run :trust)'
    end
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
