--- A small test runner for headless Neovim.
---
--- Each test runs in a coroutine so that it can wait (T.sleep, T.wait_for) while Neovim's
--- main loop keeps processing typed keys, timers and LSP messages, as it does for a user.
--- The run ends with "N passed, N failed" and exits non-zero when a test failed.
local T = {}

local tests = {}
local results = { passed = 0, failed = 0 }
local uv = vim.uv

---@param ... any
function T.log(...)
  local parts = {}
  for i = 1, select('#', ...) do
    local v = select(i, ...)
    parts[#parts + 1] = type(v) == 'string' and v or vim.inspect(v)
  end
  io.stdout:write(table.concat(parts, ' ') .. '\n')
  io.stdout:flush()
end

---@param name string
---@param fn fun()
function T.test(name, fn)
  tests[#tests + 1] = { name = name, fn = fn }
end

--- Lets the main loop run for `ms` milliseconds.
---@param ms integer
function T.sleep(ms)
  local co = assert(coroutine.running(), 'T.sleep must run inside a test')
  vim.defer_fn(function()
    T._resume(co)
  end, ms)
  coroutine.yield()
end

--- Waits until `cond()` returns a truthy value and returns it; fails after `timeout_ms`.
---@generic V
---@param what string
---@param cond fun(): V
---@param timeout_ms integer?
---@return V
function T.wait_for(what, cond, timeout_ms)
  local deadline = uv.now() + (timeout_ms or 10000)
  while true do
    local value = cond()
    if value then
      return value
    end
    if uv.now() > deadline then
      error(('timed out after %d ms waiting for %s'):format(timeout_ms or 10000, what), 2)
    end
    T.sleep(20)
  end
end

--- Types keys as a user would (mappings apply), then lets Neovim process them.
---@param keys string
function T.feed(keys)
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(keys, true, false, true), 'mt', false)
  T.sleep(10)
end

--- Types `text` one character at a time until `found()` returns a value (after `busy()`
--- says the answer to the last keystroke is in); returns that value and what was typed.
---@generic V
---@param text string
---@param busy fun(): boolean
---@param found fun(): V?
---@param timeout_ms integer
---@return V?, string
function T.type_until(text, busy, found, timeout_ms)
  local typed = ''
  for char in text:gmatch('.') do
    T.feed(char)
    typed = typed .. char
    T.wait_for('an answer', function()
      return not busy()
    end, timeout_ms)
    local value = found()
    if value then
      return value, typed
    end
  end
  return nil, typed
end

---@param actual any
---@param expected any
---@param what string?
function T.eq(actual, expected, what)
  if not vim.deep_equal(actual, expected) then
    error(
      ('%sexpected %s, got %s'):format(
        what and (what .. ': ') or '',
        vim.inspect(expected),
        vim.inspect(actual)
      ),
      2
    )
  end
end

---@param value any
---@param what string
function T.ok(value, what)
  if not value then
    error('expected ' .. what, 2)
  end
end

---@param fn fun()
---@param pattern string
function T.raises(fn, pattern)
  local ok, err = pcall(fn)
  if ok then
    error('expected an error matching ' .. pattern, 2)
  end
  if not tostring(err):find(pattern, 1, true) then
    error(('error %q does not contain %q'):format(tostring(err), pattern), 2)
  end
end

--- A fresh scratch buffer holding `lines`, in its own window, in normal mode.
---@param lines string[]
---@param name string?
---@return integer bufnr
function T.buffer(lines, name)
  vim.cmd('stopinsert')
  vim.cmd('enew!')
  local bufnr = vim.api.nvim_get_current_buf()
  if name then
    vim.api.nvim_buf_set_name(bufnr, name)
  end
  vim.api.nvim_buf_set_lines(bufnr, 0, -1, false, lines)
  return bufnr
end

---@param bufnr integer?
---@return string[]
function T.lines(bufnr)
  return vim.api.nvim_buf_get_lines(bufnr or 0, 0, -1, false)
end

local on_finish = {}

--- Runs `fn` after the last test (stopping servers, writing files).
---@param fn fun()
function T.finally(fn)
  on_finish[#on_finish + 1] = fn
end

local current ---@type { name: string, co: thread }?
local run_next

local function finish()
  for _, fn in ipairs(on_finish) do
    local ok, err = pcall(fn)
    if not ok then
      T.log('cleanup failed: ' .. tostring(err))
    end
  end
  -- on a line of its own, even after a message Neovim printed without a line break
  T.log(('\n%d passed, %d failed'):format(results.passed, results.failed))
  vim.cmd(('cquit %d'):format(results.failed > 0 and 1 or 0))
end

---@param co thread
function T._resume(co)
  if not current or current.co ~= co then
    return
  end
  local ok, err = coroutine.resume(co)
  if not ok then
    results.failed = results.failed + 1
    T.log(('not ok - %s\n    %s'):format(current.name, debug.traceback(co, tostring(err))))
  elseif coroutine.status(co) == 'dead' then
    results.passed = results.passed + 1
    T.log('ok - ' .. current.name)
  else
    return
  end
  current = nil
  vim.schedule(run_next)
end

local index = 0
run_next = function()
  index = index + 1
  local t = tests[index]
  if not t then
    finish()
    return
  end
  current = { name = t.name, co = coroutine.create(t.fn) }
  T._resume(current.co)
end

--- Runs every registered test; the whole run fails after `limit_s` seconds.
---@param limit_s integer
function T.run(limit_s)
  local watchdog = assert(uv.new_timer())
  watchdog:start(
    limit_s * 1000,
    0,
    vim.schedule_wrap(function()
      T.log(
        ('not ok - %s\n    the run took longer than %d s'):format(
          current and current.name or '?',
          limit_s
        )
      )
      results.failed = results.failed + 1
      current = nil
      finish()
    end)
  )
  vim.schedule(run_next)
end

return T
