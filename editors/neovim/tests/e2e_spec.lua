-- The plugin against the real language server (`python -m cato_lsp`) in embedded mode,
-- with one emulated replica running fast: type, see ghost text, accept it, translate.
local T = require('harness')
local cato = require('cato')
local ghost = require('cato.ghost')

local api = vim.api
local python = os.getenv('CATO_NVIM_PYTHON') or 'python3'
local transcript_path = os.getenv('CATO_NVIM_TRANSCRIPT')

local dir = vim.fn.tempname()
vim.fn.mkdir(dir, 'p')
local config_path = dir .. '/cato.toml'
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
}, config_path)

local SOURCE = {
  'def fibonacci(n):',
  '    if n < 2:',
  '        return n',
  '    a, b = 0, 1',
  '    for _ in range(n - 1):',
  '        a, b = b, a + b',
  '    return b',
  '',
  '',
  'def total(values):',
  '    result = 0',
  '    for value in values:',
  '        ',
}

local transcript = {}

---@param ... string
local function say(...)
  for _, line in ipairs({ ... }) do
    transcript[#transcript + 1] = line
    T.log(line)
  end
end

---@param lines string[]
---@param cursor integer[]?
---@return string[]
local function numbered(lines, cursor)
  local out = {}
  for i, line in ipairs(lines) do
    local text = line
    if cursor and cursor[1] == i then
      text = line:sub(1, cursor[2]) .. '|' .. line:sub(cursor[2] + 1)
    end
    out[#out + 1] = ('  %2d  %s'):format(i, text)
  end
  return out
end

--- The ghost text as drawn: read back from the extmark, not from the plugin's state.
---@return { row: integer, col: integer, lines: string[] }?
local function drawn_ghost()
  local mark = api.nvim_buf_get_extmarks(0, ghost.ns, 0, -1, { details = true })[1]
  if not mark then
    return nil
  end
  local details = mark[4]
  local lines = { details.virt_text and details.virt_text[1][1] or '' }
  for _, chunks in ipairs(details.virt_lines or {}) do
    lines[#lines + 1] = chunks[1] and chunks[1][1] or ''
  end
  return { row = mark[2], col = mark[3], lines = lines }
end

cato.setup({
  cmd = { python, '-m', 'cato_lsp' },
  filetypes = { 'python', 'rust' },
  root_markers = { 'cato.toml' },
  settings = { mode = 'embedded', config = config_path, debounceMs = 0 },
  ghost_text = { backend = 'extmark', debounce_ms = 30 },
})
-- Keep the server in Neovim's process group, so the test runner can see it (and anything
-- it started) end with the run.
vim.lsp.config('cato', { detached = false })

local source_path = dir .. '/stats.py'
vim.fn.writefile(SOURCE, source_path)

T.test('the real server attaches and advertises inline completion', function()
  vim.cmd.edit(vim.fn.fnameescape(source_path))
  vim.bo.filetype = 'python'
  local client = T.wait_for('cato-lsp to start', function()
    local c = cato.client()
    return c and c.initialized and c
  end, 30000)
  T.ok(client:supports_method('textDocument/inlineCompletion'), 'inlineCompletionProvider')
  T.ok(ghost.is_attached(api.nvim_get_current_buf()), 'ghost text attached to the buffer')
end)

T.test('typing shows ghost text; <Tab> accepts it', function()
  local bufnr = api.nvim_get_current_buf()
  api.nvim_win_set_cursor(0, { #SOURCE, #SOURCE[#SOURCE] })
  T.feed('A')
  -- Type until the server has something to suggest (it may find nothing worth showing
  -- at a given position; the text of the emulated model is not chosen by this test).
  local shown, typed = T.type_until('result += value', ghost.busy, drawn_ghost, 60000)
  T.ok(shown, 'a suggestion while typing')
  local before = T.lines(bufnr)
  local cursor = api.nvim_win_get_cursor(0)
  say('== buffer before (| is the cursor)')
  vim.list_extend(transcript, numbered(before, cursor))
  T.log(table.concat(numbered(before, cursor), '\n'))
  say(('== ghost text at line %d, column %d'):format(shown.row + 1, shown.col))
  for _, line in ipairs(shown.lines) do
    say('  > ' .. line)
  end
  T.eq({ shown.row, shown.col }, { cursor[1] - 1, cursor[2] }, 'ghost text at the cursor')
  T.eq(before[#SOURCE], SOURCE[#SOURCE] .. typed, 'showing it does not change the buffer')

  T.feed('<Tab>')
  local after = T.lines(bufnr)
  local current = before[cursor[1]]
  local expected = vim.list_slice(before, 1, cursor[1] - 1)
  local inserted = vim.deepcopy(shown.lines)
  inserted[1] = current:sub(1, cursor[2]) .. inserted[1]
  inserted[#inserted] = inserted[#inserted] .. current:sub(cursor[2] + 1)
  vim.list_extend(expected, inserted)
  vim.list_extend(expected, vim.list_slice(before, cursor[1] + 1))
  say('== buffer after <Tab>')
  local after_cursor = api.nvim_win_get_cursor(0)
  vim.list_extend(transcript, numbered(after, after_cursor))
  T.log(table.concat(numbered(after, after_cursor), '\n'))
  T.eq(after, expected, 'the buffer holds exactly the ghost text')
  T.feed('<Esc>')
end)

T.test('the accept command reached the server', function()
  local answer
  cato.status(function(err, result)
    answer = { err = err, result = result }
  end)
  T.wait_for(':CatoStatus', function()
    return answer
  end, 30000)
  T.eq(answer.err, nil)
  local completions = answer.result.completions
  say('== :CatoStatus', '  ' .. vim.inspect(completions, { newline = ' ', indent = '' }))
  T.eq(completions.accepted, 1, 'accepted suggestions counted by the server')
  T.eq(answer.result.reachable, true)
end)

T.test(':CatoTranslate rust opens the translation in a new buffer', function()
  local source_buf = api.nvim_get_current_buf()
  vim.cmd('CatoTranslate rust')
  local target = dir .. '/stats.rs'
  T.wait_for('the translation to open', function()
    return api.nvim_buf_get_name(0) == target
  end, 60000)
  local lines = T.lines()
  T.ok(api.nvim_get_current_buf() ~= source_buf, 'a new buffer')
  T.ok(#lines > 1 and vim.trim(table.concat(lines, '\n')) ~= '', 'translated text in ' .. target)
  T.eq(vim.bo.filetype, 'rust')
  -- written to disk by the server, as in every editor: nothing left to save
  T.eq(vim.fn.readfile(target), lines, 'the file on disk holds the translation')
  T.eq(vim.bo.modified, false, 'no unsaved changes')
  say('== :CatoTranslate rust -> ' .. vim.fs.basename(target) .. ' (' .. #lines .. ' lines)')
  for i = 1, math.min(5, #lines) do
    say('  ' .. lines[i])
  end
end)

T.test(':checkhealth cato finds the server and its Python', function()
  vim.cmd('checkhealth cato')
  local report = table.concat(T.lines(), '\n')
  vim.cmd('bwipeout!')
  T.ok(report:find('OK server command', 1, true), 'the server command in\n' .. report)
  T.ok(report:find('OK Python 3%.1%d'), 'a Python version in\n' .. report)
  T.ok(report:find('OK cato_lsp', 1, true), 'cato_lsp importable in\n' .. report)
  T.ok(report:find('embedded mode', 1, true), 'the mode in\n' .. report)
  T.ok(report:find('cato: doctor', 1, true), "cato doctor's section in\n" .. report)
  T.ok(report:find('OK environment: ', 1, true), "doctor's environment check in\n" .. report)
  T.ok(report:find('vllm: ', 1, true), "doctor's vLLM check in\n" .. report)
end)

T.finally(function()
  local clients = vim.lsp.get_clients({ name = 'cato' })
  for _, client in ipairs(clients) do
    client:stop()
  end
  vim.wait(10000, function()
    return vim.iter(clients):all(function(c)
      return c:is_stopped()
    end)
  end, 50)
  if transcript_path then
    vim.fn.writefile(transcript, transcript_path)
  end
end)
