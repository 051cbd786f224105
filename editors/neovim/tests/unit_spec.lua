-- The plugin against an in-process fake server: ghost text, accept, staleness, keys, commands.
local T = require('harness')
local fake = require('fake_server')
local cato = require('cato')
local config = require('cato.config')
local ghost = require('cato.ghost')

local api = vim.api
local server = fake.new()
-- Long enough that an answer cannot arrive while a test looks at the previous one.
local HOLD_MS = 5000

--- Answers every inline request with `text` at the cursor, carrying an accept command.
---@param text string
local function answer_with(text)
  server.answer = function(params)
    return {
      items = {
        {
          insertText = text,
          range = { start = params.position, ['end'] = params.position },
          command = { title = 'accept', command = 'cato.accept', arguments = { { id = 'item-1' } } },
        },
      },
    }
  end
end

---@return vim.api.keyset.get_extmark_item[]
local function marks()
  return api.nvim_buf_get_extmarks(0, ghost.ns, 0, -1, { details = true })
end

--- A python buffer with the fake server attached, in insert mode at the end of its last line.
---@param lines string[]
---@return integer bufnr
local function attached_buffer(lines)
  local bufnr = T.buffer(lines)
  vim.bo[bufnr].filetype = 'python'
  T.wait_for('the client to attach', function()
    return cato.client(bufnr) and ghost.is_attached(bufnr)
  end)
  api.nvim_win_set_cursor(0, { #lines, #lines[#lines] })
  return bufnr
end

local function leave_insert()
  T.feed('<Esc>')
  T.wait_for('normal mode', function()
    return api.nvim_get_mode().mode == 'n'
  end)
end

cato.setup({
  cmd = server.cmd,
  filetypes = { 'python', 'rust' },
  ghost_text = { backend = 'extmark', debounce_ms = 20 },
  settings = { mode = 'embedded', tasks = {} },
})

T.test('options: defaults, overrides and errors', function()
  local opts = config.merge({ keymaps = { accept = '<C-l>' }, ghost_text = { debounce_ms = 10 } })
  T.eq(opts.keymaps.accept, '<C-l>')
  T.eq(opts.keymaps.dismiss, config.defaults.keymaps.dismiss)
  T.eq(opts.ghost_text.debounce_ms, 10)
  T.eq(opts.ghost_text.position, 'inline')
  T.eq(config.merge({ cmd = { 'python3', '-m', 'cato_lsp' } }).cmd, { 'python3', '-m', 'cato_lsp' })
  T.raises(function()
    config.merge({ ghost_text = { backend = 'copilot' } })
  end, 'ghost_text.backend')
  T.raises(function()
    config.merge({ keymaps = { accept = 3 } })
  end, 'keymaps.accept')
end)

T.test('settings travel as JSON objects, lists stay lists', function()
  local json = vim.json.encode(
    config.to_json_object({ tasks = {}, languages = {}, context = { budgetTokens = 64 } })
  )
  local decoded = vim.json.decode(json)
  T.ok(json:find('"tasks":{}', 1, true), 'tasks as an object in ' .. json)
  T.ok(json:find('"languages":[]', 1, true), 'languages as an array in ' .. json)
  T.eq(decoded.context, { budgetTokens = 64 })
  T.eq(vim.json.encode(config.to_json_object({})), '{}')
end)

T.test('the client starts with the settings and announces inline completion', function()
  attached_buffer({ 'x = 1' })
  local init = fake.requests(server, 'initialize')[1]
  T.ok(init, 'an initialize request')
  T.eq(init.params.initializationOptions.mode, 'embedded')
  T.eq(init.params.capabilities.textDocument.inlineCompletion, { dynamicRegistration = false })
  T.eq(init.params.capabilities.window.showDocument, { support = true })
  T.eq(cato.backend, 'extmark')
end)

T.test('typing shows the suggestion as ghost text: first line inline, others below', function()
  answer_with('(a, b):\n    return a + b')
  attached_buffer({ 'def add' })
  T.feed('A')
  local mark = T.wait_for('an extmark', function()
    return marks()[1]
  end)
  local details = mark[4]
  T.eq(details.virt_text, { { '(a, b):', 'CatoGhostText' } })
  T.eq(details.virt_lines, { { { '    return a + b', 'CatoGhostText' } } })
  T.eq(details.virt_text_pos, 'inline')
  T.eq({ mark[2], mark[3] }, { 0, 7 }, 'drawn at the cursor')
  T.ok(cato.is_visible(), 'is_visible()')
  T.eq(T.lines(), { 'def add' }, 'the buffer is untouched')
  local params = fake.requests(server, 'textDocument/inlineCompletion')
  T.eq(params[#params].params.context.triggerKind, 2)
  T.eq(params[#params].params.position, { line = 0, character = 7 })
  leave_insert()
  T.eq(#marks(), 0, 'leaving insert mode hides it')
end)

T.test('<Tab> inserts the suggestion and runs its accept command', function()
  answer_with('(a, b):\n    return a + b')
  attached_buffer({ 'def add' })
  T.feed('A')
  T.wait_for('the suggestion', cato.is_visible)
  T.feed('<Tab>')
  T.wait_for('the accept command', function()
    return #fake.requests(server, 'workspace/executeCommand') > 0
  end)
  T.eq(T.lines(), { 'def add(a, b):', '    return a + b' })
  T.eq(api.nvim_win_get_cursor(0), { 2, 16 }, 'cursor after the inserted text')
  local cmd = fake.requests(server, 'workspace/executeCommand')[1].params
  T.eq(cmd, { command = 'cato.accept', arguments = { { id = 'item-1' } } })
  T.eq(api.nvim_get_mode().mode, 'i', 'still in insert mode')
  leave_insert()
  server.requests = {}
end)

T.test('<Tab> without a suggestion inserts a tab', function()
  server.answer = function()
    return { items = {} }
  end
  local bufnr = attached_buffer({ 'x' })
  vim.bo[bufnr].expandtab = false
  T.feed('A')
  T.sleep(80)
  T.ok(not cato.is_visible(), 'no suggestion')
  T.feed('<Tab>y')
  T.wait_for('the typed text', function()
    return T.lines()[1] == 'x\ty'
  end)
  leave_insert()
end)

T.test('a newer keystroke cancels the request in flight; only the last answer is drawn', function()
  server.delay_ms = 250
  server.answer = function(params)
    return { items = { { insertText = 'ANSWER' .. params.position.character } } }
  end
  attached_buffer({ '' })
  local before = #fake.requests(server, 'textDocument/inlineCompletion')
  T.feed('i')
  T.feed('a')
  T.wait_for('a request', function()
    return #fake.requests(server, 'textDocument/inlineCompletion') > before
  end)
  T.feed('b')
  T.wait_for('the last suggestion', cato.is_visible, 5000)
  local reqs = fake.requests(server, 'textDocument/inlineCompletion')
  local first = reqs[before + 1]
  T.ok(server.cancelled[first.id], 'the first request was cancelled with $/cancelRequest')
  T.eq(cato.suggestion().shown, 'ANSWER2', 'drawn from the request at the latest position')
  T.eq(#marks(), 1)
  server.delay_ms = 0
  leave_insert()
end)

T.test('typing the start of a suggestion keeps the rest visible', function()
  answer_with('return value')
  attached_buffer({ '    ' })
  T.feed('A')
  T.wait_for('the suggestion', cato.is_visible)
  server.delay_ms = HOLD_MS
  T.feed('ret')
  T.eq(cato.suggestion().shown, 'urn value', 'the rest, without a new answer')
  T.eq(marks()[1][4].virt_text[1][1], 'urn value')
  T.feed('X')
  T.ok(not cato.is_visible(), 'a character that leaves the suggestion hides it')
  server.delay_ms = 0
  leave_insert()
end)

T.test('partial accept: next word, then next line', function()
  answer_with('foo_bar(1)\nnext_line()')
  attached_buffer({ 'x = ' })
  T.feed('A')
  T.wait_for('the suggestion', cato.is_visible)
  server.delay_ms = HOLD_MS
  T.feed('<M-Right>')
  T.eq(T.lines(), { 'x = foo_bar' })
  T.eq(cato.suggestion().shown, '(1)\nnext_line()')
  T.feed('<M-Down>')
  T.eq(T.lines(), { 'x = foo_bar(1)' })
  T.eq(cato.suggestion().shown, '\nnext_line()')
  T.eq(#fake.requests(server, 'workspace/executeCommand'), 0, 'no accept command yet')
  server.delay_ms = 0
  leave_insert()
end)

T.test('an item whose range covers typed text replaces it', function()
  server.answer = function(params)
    local pos = params.position
    return {
      items = {
        {
          insertText = 'bar()',
          range = { start = { line = pos.line, character = pos.character - 2 }, ['end'] = pos },
        },
      },
    }
  end
  attached_buffer({ 'foo.ba' })
  T.feed('A')
  T.wait_for('the suggestion', cato.is_visible)
  T.eq(cato.suggestion().shown, 'r()')
  T.feed('<Tab>')
  T.eq(T.lines(), { 'foo.bar()' })
  leave_insert()
end)

T.test('the dismiss key hides the suggestion', function()
  answer_with('pass')
  attached_buffer({ '' })
  T.feed('i')
  T.wait_for('the suggestion', cato.is_visible)
  server.delay_ms = HOLD_MS
  T.feed('<C-]>')
  T.ok(not cato.is_visible(), 'hidden')
  T.eq(#marks(), 0)
  server.delay_ms = 0
  leave_insert()
end)

T.test('a key mapped before setup still works when nothing is shown', function()
  vim.keymap.set('i', '<C-l>', 'MAPPED')
  cato.setup({
    cmd = server.cmd,
    filetypes = { 'python', 'rust' },
    ghost_text = { backend = 'extmark', debounce_ms = 20 },
    keymaps = { accept = '<C-l>' },
  })
  server.answer = function()
    return { items = {} }
  end
  attached_buffer({ '' })
  T.feed('i<C-l>')
  T.wait_for('the old mapping', function()
    return T.lines()[1] == 'MAPPED'
  end)
  leave_insert()
  cato.setup({
    cmd = server.cmd,
    filetypes = { 'python', 'rust' },
    ghost_text = { backend = 'extmark', debounce_ms = 20 },
  })
  T.eq(vim.fn.maparg('<C-l>', 'i'), 'MAPPED', 'restored when no longer used')
  vim.keymap.del('i', '<C-l>')
end)

T.test(':CatoTranslate sends the file and language; the new file opens', function()
  local dir = vim.fn.tempname()
  vim.fn.mkdir(dir, 'p')
  local target = dir .. '/add.rs'
  server.on_command = function(params, dispatchers)
    if params.command == 'cato.translateFile' then
      local uri = vim.uri_from_fname(target)
      dispatchers.server_request('workspace/applyEdit', {
        edit = {
          documentChanges = {
            { kind = 'create', uri = uri },
            {
              textDocument = { uri = uri, version = vim.NIL },
              edits = {
                {
                  range = {
                    start = { line = 0, character = 0 },
                    ['end'] = { line = 0, character = 0 },
                  },
                  newText = 'fn add() {}\n',
                },
              },
            },
          },
        },
      })
      dispatchers.server_request('window/showDocument', { uri = uri, takeFocus = true })
      return { uri = uri }
    end
    return vim.NIL
  end
  local bufnr = T.buffer({ 'def add(): pass' }, dir .. '/add.py')
  vim.bo[bufnr].filetype = 'python'
  T.wait_for('the client', function()
    return cato.client(bufnr)
  end)
  vim.cmd('CatoTranslate rust')
  T.wait_for('the translation buffer', function()
    return api.nvim_buf_get_name(0) == target
  end)
  T.eq(T.lines(), { 'fn add() {}', '' })
  local sent = fake.requests(server, 'workspace/executeCommand')
  local args = sent[#sent].params
  T.eq(args.command, 'cato.translateFile')
  T.eq(args.arguments[1].uri, vim.uri_from_fname(dir .. '/add.py'))
  T.eq(args.arguments[1].targetLanguage, 'rust')
  T.eq(vim.fn.getcompletion('CatoTranslate r', 'cmdline'), { 'rust' })
end)

T.test('cato/status notifications feed the status line and a User event', function()
  local seen
  api.nvim_create_autocmd('User', {
    pattern = 'CatoStatus',
    once = true,
    callback = function(args)
      seen = args.data
    end,
  })
  local client = assert(vim.lsp.get_clients({ name = 'cato' })[1])
  client.handlers['cato/status'](nil, {
    reachable = true,
    replicasReady = 2,
    lastTtftMs = 183.4,
    slaAttainment = { complete = 0.981, translate = 0.5 },
  }, { client_id = client.id, method = 'cato/status' })
  T.eq(seen.replicasReady, 2)
  T.eq(cato.statusline(), 'CATO 2 ready 183ms SLA 98%')
  client.handlers['cato/status'](nil, {
    reachable = true,
    replicasReady = 2,
    lastTtftMs = 34,
    suggestMs = { p50 = 241.6, p90 = 300, p99 = 420, last = 200, count = 12 },
    slaAttainment = { complete = 1 },
  }, { client_id = client.id, method = 'cato/status' })
  T.eq(cato.statusline(), 'CATO 2 ready 34ms wait 242ms SLA 100%')
  T.eq(require('cato.status').format({ b = { c = 1 }, a = true }), { 'a: true', 'b:', '  c: 1' })
  T.eq(
    require('cato.status').summary({
      state = 'ready',
      backend = 'embedded (built-in default)',
      replicasReady = 1,
      replicasTotal = 2,
      lastTtftMs = 41.6,
      suggestMs = { p50 = 240.2, p90 = 310, p99 = 480.6, last = 200, count = 12 },
      slaAttainment = { complete = 1, translate = 0.5 },
      completions = { shown = 4, accepted = 1, acceptance_rate = 0.25, cache_hits = 2 },
      orchestrator = {
        replicas = {
          { id = 'tiny-1', state = 'ready', in_flight = 0 },
          { id = 'tiny-2', state = 'pending', in_flight = 0 },
        },
      },
    }),
    {
      '  state: ready (embedded (built-in default))',
      '  replicas: 1/2 ready - tiny-1 ready (0 in flight), tiny-2 pending (0 in flight)',
      '  last TTFT: 42 ms',
      '  keystroke to suggestion: p50 240 ms, p90 310 ms, p99 481 ms (12)',
      '  SLA attainment: complete 100%, translate 50%',
      '  suggestions: 4 shown, 1 accepted (25%), 2 from cache',
    }
  )
end)

--- Runs `fn` with vim.notify recorded; returns the { message, level } pairs.
---@param fn fun(got: table[])
local function with_notify(fn)
  local got = {}
  local original = vim.notify
  vim.notify = function(msg, level)
    got[#got + 1] = { msg, level }
  end
  local ok, err = pcall(fn, got)
  vim.notify = original
  assert(ok, err)
  return got
end

T.test('server messages wait while typing, come at their level, once per outage', function()
  local messages = require('cato.messages')
  messages.reset()
  answer_with('x')
  local bufnr = attached_buffer({ 'x = ' })
  local client = assert(cato.client(bufnr))
  local show = client.handlers['window/showMessage']
  local ctx = { client_id = client.id, method = 'window/showMessage' }
  local outage = { type = 1, message = 'CATO: the orchestrator cannot be reached (refused)' }
  local got = with_notify(function(got)
    T.feed('A')
    T.wait_for('insert mode', function()
      return api.nvim_get_mode().mode == 'i'
    end)
    show(nil, outage, ctx)
    show(nil, outage, ctx) -- the plugin's or a second copy: dropped
    T.eq(#got, 0, 'nothing while typing')
    T.eq(#messages.held(), 1)
    leave_insert()
    T.wait_for('the held message', function()
      return #got > 0
    end)
    show(nil, outage, ctx) -- still the same outage
    -- the service comes back: one line, and the next outage is told again
    local status = client.handlers['cato/status']
    status(nil, { reachable = false, state = 'unreachable' }, ctx)
    status(nil, { reachable = true, state = 'ready' }, ctx)
    messages.min_interval_ms = 0
    show(nil, outage, ctx)
    show(nil, { type = 2, message = 'CATO: the rust translation has 1 problem(s)' }, ctx)
    messages.min_interval_ms = 5000
  end)
  T.eq(got, {
    { outage.message, vim.log.levels.ERROR },
    { 'cato: the service is reachable again', vim.log.levels.INFO },
    { outage.message, vim.log.levels.ERROR },
    { 'CATO: the rust translation has 1 problem(s)', vim.log.levels.WARN },
  })
end)

T.test('a message wider than the command line is cut, with Neovim\'s own vim.notify', function()
  local messages = require('cato.messages')
  local room = vim.v.echospace
  T.ok(room > 1, 'room on the command line: ' .. room)
  local cut = messages.fit(string.rep('x', room + 40))
  T.eq(vim.fn.strdisplaywidth(cut), room)
  T.eq(messages.fit('short'), 'short')
  T.eq(messages.fit('two\nlines'), 'two lines')
  local original = vim.notify
  vim.notify = function() end -- a notification plugin: the whole text
  local whole = messages.fit(string.rep('y', room + 40))
  vim.notify = original
  T.eq(#whole, room + 40)
end)

T.test('a status notification redraws the status line, in insert mode too', function()
  local status = require('cato.status')
  local redraws = 0
  local original = status.redraw
  status.redraw = function()
    redraws = redraws + 1
  end
  local bufnr = attached_buffer({ 'y = ' })
  T.feed('A')
  local client = assert(cato.client(bufnr))
  client.handlers['cato/status'](nil, { reachable = true, state = 'starting' }, {
    client_id = client.id,
    method = 'cato/status',
  })
  T.eq(cato.statusline(), 'CATO starting')
  T.wait_for('a redraw', function()
    return redraws > 0
  end)
  status.redraw = original
  leave_insert()
end)

T.test('status(cb) hands the answer over quietly; commands before attach say starting', function()
  server.on_command = function(params)
    return params.command == 'cato.status' and { state = 'ready' } or vim.NIL
  end
  local bufnr = attached_buffer({ 'z = 1' })
  local echoed = 0
  local echo = api.nvim_echo
  api.nvim_echo = function(...)
    echoed = echoed + 1
    return echo(...)
  end
  local answer
  cato.status(function(_, result)
    answer = result
  end)
  T.wait_for('the status answer', function()
    return answer
  end)
  api.nvim_echo = echo
  T.eq(answer, { state = 'ready' })
  T.eq(echoed, 0, 'nothing printed')
  server.on_command = function()
    return vim.NIL
  end
  -- a new server still answering `initialize`: the command says it is starting
  for _, c in ipairs(vim.lsp.get_clients({ name = 'cato' })) do
    c:stop(true)
  end
  T.wait_for('no client', function()
    return #vim.lsp.get_clients({ name = 'cato' }) == 0
  end)
  server.init_delay_ms = 500
  local other
  local got = with_notify(function()
    other = T.buffer({ 'def f():', '    pass' }, vim.fn.tempname() .. '.py')
    vim.bo[other].filetype = 'python'
    local before = #fake.requests(server, 'initialize')
    T.wait_for('a server being initialized', function()
      return #fake.requests(server, 'initialize') > before
    end)
    T.ok(not cato.client(other), 'not attached yet')
    cato.summarize()
  end)
  server.init_delay_ms = 0
  T.ok(bufnr ~= other, 'another buffer')
  T.eq(got, { { 'cato: cato-lsp is starting; try again in a moment', vim.log.levels.WARN } })
  T.wait_for('the client to attach', function()
    local c = cato.client(other)
    return c and c.initialized
  end)
end)

T.test(':CatoSummarize sends a range; :CatoGenerate the cursor', function()
  local bufnr = T.buffer({ 'def f(x):', '    return x' }, vim.fn.tempname() .. '.py')
  vim.bo[bufnr].filetype = 'python'
  T.wait_for('the client', function()
    return cato.client(bufnr)
  end)
  vim.cmd('1,2CatoSummarize')
  api.nvim_win_set_cursor(0, { 2, 4 })
  vim.cmd('CatoGenerate')
  local sent = T.wait_for('both commands', function()
    local cmds = fake.requests(server, 'workspace/executeCommand')
    return #cmds >= 2 and cmds
  end)
  local summarize, generate = sent[#sent - 1].params, sent[#sent].params
  T.eq(summarize.command, 'cato.summarize')
  T.eq(
    summarize.arguments[1].range,
    { start = { line = 0, character = 0 }, ['end'] = { line = 1, character = 12 } }
  )
  T.eq(summarize.arguments[1].uri, vim.uri_from_bufnr(bufnr))
  T.eq(generate.command, 'cato.generate')
  T.eq(
    generate.arguments[1].range,
    { start = { line = 1, character = 4 }, ['end'] = { line = 1, character = 4 } }
  )
end)

T.test('ghost_text.enabled = false leaves insert mode alone', function()
  cato.setup({
    cmd = server.cmd,
    filetypes = { 'python', 'rust' },
    ghost_text = { enabled = false },
  })
  T.eq(cato.backend, nil)
  local tab = vim.fn.maparg('<Tab>', 'i', false, true)
  T.ok(not (tab.desc or ''):find('^cato: '), 'no cato <Tab> mapping, got ' .. vim.inspect(tab))
  local bufnr = T.buffer({ '' })
  vim.bo[bufnr].filetype = 'python'
  T.wait_for('the client', function()
    return cato.client(bufnr)
  end)
  T.ok(not ghost.is_attached(bufnr), 'no ghost text in the buffer')
  cato.setup({
    cmd = server.cmd,
    filetypes = { 'python', 'rust' },
    ghost_text = { backend = 'extmark', debounce_ms = 20 },
  })
  T.ok(ghost.is_attached(bufnr), 'attached again by a new setup')
end)

T.test('the help file has valid, unique tags', function()
  local dir = vim.fn.tempname()
  vim.fn.mkdir(dir, 'p')
  local root = vim.fs.dirname(vim.fs.dirname(debug.getinfo(1, 'S').source:sub(2)))
  vim.fn.writefile(vim.fn.readfile(root .. '/doc/cato.txt'), dir .. '/cato.txt')
  vim.cmd.helptags(vim.fn.fnameescape(dir))
  local tags = vim.fn.readfile(dir .. '/tags')
  local names = vim.tbl_map(function(line)
    return vim.split(line, '\t')[1]
  end, tags)
  for _, want in ipairs({
    'cato.txt',
    'cato-setup',
    ':CatoTranslate',
    ':CatoStatus',
    'cato.accept()',
    'cato-health',
  }) do
    T.ok(vim.tbl_contains(names, want), 'tag ' .. want)
  end
end)

T.finally(function()
  for _, client in ipairs(vim.lsp.get_clients()) do
    client:stop(true)
  end
end)
