--- Inline suggestions drawn as extmarks, for Neovim versions without vim.lsp.inline_completion.
---
--- Each keystroke in insert mode restarts a debounce timer and cancels the request in
--- flight; when the timer fires, one `textDocument/inlineCompletion` request is sent and
--- its answer is drawn only if the buffer and cursor are still where they were. Typing the
--- first characters of a suggestion keeps the rest visible until the next answer arrives.
local M = {}

local api = vim.api

M.ns = api.nvim_create_namespace('cato.ghost_text')

local TRIGGER_INVOKED = 1
local TRIGGER_AUTOMATIC = 2

---@class cato.Suggestion
---@field client_id integer
---@field bufnr integer
---@field row integer 0-based line of the suggestion.
---@field start_col integer Byte column where the inserted text starts.
---@field anchor_col integer Byte column of the cursor when the request was sent.
---@field end_offset integer Bytes after the cursor that the suggestion replaces.
---@field suffix string The line after the cursor when the request was sent.
---@field text string The whole text to insert.
---@field snippet boolean The text is snippet syntax.
---@field command lsp.Command?

---@class cato.GhostState
---@field timer uv.uv_timer_t?
---@field request { client_id: integer, id: integer }?
---@field suggestion cato.Suggestion?
---@field extmark integer?
---@field attached table<integer, integer> Buffer -> autocmd group.
local state = { timer = nil, request = nil, suggestion = nil, extmark = nil, attached = {} }

---@type cato.GhostText
local opts = require('cato.config').defaults.ghost_text

---@type fun(bufnr: integer): vim.lsp.Client?
local find_client = function()
  return nil
end

--- Configures drawing and where to find the client of a buffer.
---@param ghost_opts cato.GhostText
---@param client_of fun(bufnr: integer): vim.lsp.Client?
function M.configure(ghost_opts, client_of)
  opts = ghost_opts
  find_client = client_of
end

---@return integer row 0-based
---@return integer col byte
local function cursor()
  local pos = api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2]
end

---@param bufnr integer
---@param row integer
---@return string
local function line_at(bufnr, row)
  return api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
end

local function in_insert_mode()
  local mode = api.nvim_get_mode().mode
  return mode:sub(1, 1) == 'i' or mode:sub(1, 1) == 'R'
end

local function cancel_request()
  local req = state.request
  state.request = nil
  if req then
    local client = vim.lsp.get_client_by_id(req.client_id)
    if client then
      client:cancel_request(req.id)
    end
  end
end

local function stop_timer()
  if state.timer then
    state.timer:stop()
  end
end

--- Removes the drawn suggestion, if any.
function M.clear()
  local s = state.suggestion
  if s and state.extmark and api.nvim_buf_is_valid(s.bufnr) then
    pcall(api.nvim_buf_del_extmark, s.bufnr, M.ns, state.extmark)
  end
  state.suggestion = nil
  state.extmark = nil
end

--- Stops everything in flight and hides the suggestion.
function M.reset()
  stop_timer()
  cancel_request()
  M.clear()
end

--- The part of the suggestion not yet in the buffer, or nil when the buffer has left it.
---@param s cato.Suggestion
---@return string?
local function remaining(s)
  if api.nvim_get_current_buf() ~= s.bufnr then
    return nil
  end
  local row, col = cursor()
  if row ~= s.row or col < s.anchor_col then
    return nil
  end
  local line = line_at(s.bufnr, row)
  if line:sub(col + 1) ~= s.suffix then
    return nil
  end
  local typed = line:sub(s.start_col + 1, col)
  if s.text:sub(1, #typed) ~= typed or #typed >= #s.text then
    return nil
  end
  return s.text:sub(#typed + 1)
end

--- Snippet syntax as the text it expands to (placeholders filled with their defaults).
---@param text string
---@param snippet boolean
---@return string
local function display_text(text, snippet)
  if not snippet then
    return text
  end
  local ok, grammar = pcall(require, 'vim.lsp._snippet_grammar')
  if ok then
    local parsed_ok, parsed = pcall(grammar.parse, text)
    if parsed_ok then
      return tostring(parsed)
    end
  end
  return text
end

--- Draws `text` at the cursor: the first line as virtual text, the others as virtual lines.
---@param s cato.Suggestion
---@param text string
local function draw(s, text)
  local row, col = cursor()
  local lines = vim.split(display_text(text, s.snippet), '\n', { plain = true })
  local tail = s.end_offset > 0 and s.suffix:sub(1, s.end_offset) or ''
  if #lines == 1 and tail ~= '' and vim.endswith(lines[1], tail) then
    lines[1] = lines[1]:sub(1, #lines[1] - #tail)
  end
  ---@type vim.api.keyset.set_extmark
  local mark = { hl_mode = 'combine', priority = 200 }
  if state.extmark then
    mark.id = state.extmark
  end
  mark.virt_text = { { lines[1], opts.hl_group } }
  mark.virt_text_pos = opts.position == 'eol' and 'eol' or 'inline'
  if #lines > 1 then
    mark.virt_lines = {}
    for i = 2, #lines do
      mark.virt_lines[#mark.virt_lines + 1] = { { lines[i], opts.hl_group } }
    end
  end
  state.extmark = api.nvim_buf_set_extmark(s.bufnr, M.ns, row, col, mark)
end

---@param result lsp.InlineCompletionItem[]|lsp.InlineCompletionList|nil
---@return lsp.InlineCompletionItem?
local function first_item(result)
  if type(result) ~= 'table' then
    return nil
  end
  local items = result.items or result
  return type(items) == 'table' and items[1] or nil
end

--- Turns an LSP item into a suggestion anchored at the cursor; nil when it does not fit there.
---@param client vim.lsp.Client
---@param bufnr integer
---@param item lsp.InlineCompletionItem
---@return cato.Suggestion?
local function to_suggestion(client, bufnr, item)
  local text = item.insertText
  local snippet = type(text) == 'table'
  if snippet then
    text = text.value
  end
  if type(text) ~= 'string' or text == '' then
    return nil
  end
  text = text:gsub('\r\n', '\n')
  local row, col = cursor()
  local line = line_at(bufnr, row)
  local start_col, end_col = col, col
  if item.range then
    local s, e = item.range.start, item.range['end']
    if s.line ~= row or e.line ~= row then
      return nil
    end
    start_col = vim.str_byteindex(line, client.offset_encoding, s.character, false)
    end_col = vim.str_byteindex(line, client.offset_encoding, e.character, false)
  end
  if start_col > col or end_col < col then
    return nil
  end
  ---@type cato.Suggestion
  local s = {
    client_id = client.id,
    bufnr = bufnr,
    row = row,
    start_col = start_col,
    anchor_col = col,
    end_offset = end_col - col,
    suffix = line:sub(col + 1),
    text = text,
    snippet = snippet,
    command = item.command,
  }
  return remaining(s) and s or nil
end

---@param s cato.Suggestion
local function show(s)
  M.clear()
  local rest = remaining(s)
  if not rest then
    return
  end
  state.suggestion = s
  draw(s, rest)
end

--- Sends one request for the cursor's position; a newer one cancels it.
---@param bufnr integer
---@param trigger_kind integer
function M.request(bufnr, trigger_kind)
  cancel_request()
  local client = find_client(bufnr)
  if not client or not in_insert_mode() or api.nvim_get_current_buf() ~= bufnr then
    return
  end
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  ---@cast params lsp.InlineCompletionParams
  params.context = { triggerKind = trigger_kind }
  local tick = api.nvim_buf_get_changedtick(bufnr)
  local row, col = cursor()
  local id ---@type integer?
  local ok, request_id = client:request(
    'textDocument/inlineCompletion',
    params,
    function(err, result)
      if not state.request or state.request.id ~= id then
        return
      end
      state.request = nil
      if err then
        vim.lsp.log.warn('cato: inline completion failed', err)
        return
      end
      if api.nvim_get_current_buf() ~= bufnr or not in_insert_mode() then
        return
      end
      local r, c = cursor()
      if api.nvim_buf_get_changedtick(bufnr) ~= tick or r ~= row or c ~= col then
        return
      end
      local item = first_item(result)
      local s = item and to_suggestion(client, bufnr, item)
      if s then
        show(s)
      end
    end,
    bufnr
  )
  if ok and request_id then
    id = request_id
    state.request = { client_id = client.id, id = request_id }
  end
end

--- Asks for a suggestion after the debounce delay; the latest call wins.
---@param bufnr integer
---@param trigger_kind integer?
function M.schedule(bufnr, trigger_kind)
  state.timer = state.timer or assert(vim.uv.new_timer())
  state.timer:stop()
  cancel_request()
  state.timer:start(
    math.max(0, opts.debounce_ms),
    0,
    vim.schedule_wrap(function()
      if api.nvim_buf_is_valid(bufnr) then
        M.request(bufnr, trigger_kind or TRIGGER_AUTOMATIC)
      end
    end)
  )
end

--- Asks now, as an explicit request of the user.
function M.trigger()
  M.schedule(api.nvim_get_current_buf(), TRIGGER_INVOKED)
end

--- After a keystroke: keep what still matches, hide the rest, and ask again.
---@param bufnr integer
local function on_change(bufnr)
  local s = state.suggestion
  if s then
    local rest = remaining(s)
    if rest then
      draw(s, rest)
    else
      M.clear()
    end
  end
  M.schedule(bufnr)
end

---@return boolean
function M.visible()
  local s = state.suggestion
  return s ~= nil and remaining(s) ~= nil
end

--- The suggestion shown: its whole text and the part drawn as ghost text.
---@return { text: string, shown: string, row: integer, col: integer }?
function M.current()
  local s = state.suggestion
  local rest = s and remaining(s)
  if not s or not rest then
    return nil
  end
  local row, col = cursor()
  return { text = s.text, shown = rest, row = row, col = col }
end

---@param s cato.Suggestion
local function run_command(s)
  local client = vim.lsp.get_client_by_id(s.client_id)
  if not client or not s.command then
    return
  end
  client:request('workspace/executeCommand', {
    command = s.command.command,
    arguments = s.command.arguments,
  }, function(err)
    if err then
      vim.lsp.log.warn('cato: accept command failed', err)
    end
  end, s.bufnr)
end

--- Replaces the suggestion's range with its whole text and moves the cursor past it.
---@param s cato.Suggestion
local function insert_whole(s)
  local _, col = cursor()
  local end_col = math.min(col + s.end_offset, #line_at(s.bufnr, s.row))
  if s.snippet then
    api.nvim_buf_set_text(s.bufnr, s.row, s.start_col, s.row, end_col, { '' })
    api.nvim_win_set_cursor(0, { s.row + 1, s.start_col })
    vim.snippet.expand(s.text)
    return
  end
  local lines = vim.split(s.text, '\n', { plain = true })
  api.nvim_buf_set_text(s.bufnr, s.row, s.start_col, s.row, end_col, lines)
  local last_col = (#lines == 1 and s.start_col or 0) + #lines[#lines]
  api.nvim_win_set_cursor(0, { s.row + #lines, last_col })
end

---@param rest string
---@param unit 'word'|'line'
---@return string
local function leading_part(rest, unit)
  if unit == 'line' then
    return rest:match('^\n?[^\n]*') or rest
  end
  return rest:match('^%s*[%w_]+') or rest:match('^%s*[^%w_%s]+') or rest:match('^%s+') or rest
end

--- Inserts the start of the suggestion at the cursor; the rest stays visible.
---@param s cato.Suggestion
---@param part string
local function insert_part(s, part)
  local row, col = cursor()
  local lines = vim.split(part, '\n', { plain = true })
  api.nvim_buf_set_text(s.bufnr, row, col, row, col, lines)
  local last_col = (#lines == 1 and col or 0) + #lines[#lines]
  api.nvim_win_set_cursor(0, { row + #lines, last_col })
end

--- Accepts the suggestion shown (all of it, or its next word or line).
---@param unit ('all'|'word'|'line')?
---@return boolean accepted
function M.accept(unit)
  local s = state.suggestion
  local rest = s and remaining(s)
  if not s or not rest then
    return false
  end
  stop_timer()
  cancel_request()
  local part = (unit == 'word' or unit == 'line') and leading_part(rest, unit) or rest
  if part == rest then
    M.clear()
    insert_whole(s)
    run_command(s)
  else
    insert_part(s, part)
    if remaining(s) then
      draw(s, assert(remaining(s)))
    else
      M.clear()
    end
  end
  return true
end

--- Starts drawing suggestions in a buffer (idempotent).
---@param bufnr integer
function M.attach(bufnr)
  if state.attached[bufnr] then
    return
  end
  local group = api.nvim_create_augroup('cato.ghost_text.' .. bufnr, { clear = true })
  state.attached[bufnr] = group
  api.nvim_create_autocmd({ 'TextChangedI', 'TextChangedP', 'CursorMovedI' }, {
    group = group,
    buffer = bufnr,
    callback = function(args)
      on_change(args.buf)
    end,
  })
  api.nvim_create_autocmd('InsertEnter', {
    group = group,
    buffer = bufnr,
    callback = function(args)
      M.schedule(args.buf)
    end,
  })
  api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = group,
    buffer = bufnr,
    callback = M.reset,
  })
end

--- Stops drawing suggestions in a buffer.
---@param bufnr integer
function M.detach(bufnr)
  local group = state.attached[bufnr]
  if not group then
    return
  end
  state.attached[bufnr] = nil
  pcall(api.nvim_del_augroup_by_id, group)
  if state.suggestion and state.suggestion.bufnr == bufnr then
    M.reset()
  end
end

--- Stops drawing suggestions everywhere.
function M.detach_all()
  for bufnr in pairs(vim.deepcopy(state.attached)) do
    M.detach(bufnr)
  end
  M.reset()
end

---@param bufnr integer
---@return boolean
function M.is_attached(bufnr)
  return state.attached[bufnr] ~= nil
end

--- Whether a request is waiting for its debounce or for its answer.
---@return boolean
function M.busy()
  return state.request ~= nil or (state.timer ~= nil and state.timer:is_active())
end

return M
