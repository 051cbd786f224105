--- An in-process language server (vim.lsp's `cmd` may be a function) that records what the
--- client sends and answers inline completion the way a test asks, for the plugin's unit
--- tests; the end-to-end tests use the real `cato-lsp` instead.
local M = {}

---@class cato.test.FakeServer
---@field requests { method: string, params: table, id: integer }[]
---@field notifications { method: string, params: table }[]
---@field cancelled table<integer, boolean>
---@field delay_ms integer Delay before answering inline completion.
---@field init_delay_ms integer Delay before answering initialize.
---@field answer fun(params: table): table? The inlineCompletion result for a request.
---@field on_command fun(params: table, dispatchers: table): any Result of executeCommand.
---@field cmd fun(dispatchers: table): table The value for `cmd` in the client config.

---@return cato.test.FakeServer
function M.new()
  ---@type cato.test.FakeServer
  local server = {
    requests = {},
    notifications = {},
    cancelled = {},
    delay_ms = 0,
    init_delay_ms = 0,
    answer = function()
      return nil
    end,
    on_command = function()
      return vim.NIL
    end,
  }
  local next_id = 0
  local pending = {} ---@type table<integer, fun(err: table?, result: any)>

  server.cmd = function(dispatchers)
    local closing = false
    local rpc = {}

    function rpc.request(method, params, callback, notify_reply_callback)
      next_id = next_id + 1
      local id = next_id
      server.requests[#server.requests + 1] = { method = method, params = params, id = id }
      local function reply(err, result)
        if pending[id] == nil then
          return
        end
        pending[id] = nil
        callback(err, result)
        if notify_reply_callback then
          notify_reply_callback(id)
        end
      end
      pending[id] = reply
      if method == 'initialize' then
        vim.defer_fn(function()
          reply(nil, {
            capabilities = {
              textDocumentSync = 1,
              inlineCompletionProvider = true,
              executeCommandProvider = {
                commands = {
                  'cato.accept',
                  'cato.translateFile',
                  'cato.summarize',
                  'cato.generate',
                  'cato.status',
                },
              },
            },
          })
        end, server.init_delay_ms)
      elseif method == 'textDocument/inlineCompletion' then
        vim.defer_fn(function()
          if server.cancelled[id] then
            reply({ code = -32800, message = 'cancelled' }, nil)
          else
            reply(nil, server.answer(params))
          end
        end, server.delay_ms)
      elseif method == 'workspace/executeCommand' then
        vim.schedule(function()
          reply(nil, server.on_command(params, dispatchers))
        end)
      else
        vim.schedule(function()
          reply(nil, vim.NIL)
        end)
      end
      return true, id
    end

    function rpc.notify(method, params)
      server.notifications[#server.notifications + 1] = { method = method, params = params }
      if method == '$/cancelRequest' then
        server.cancelled[params.id] = true
      elseif method == 'exit' then
        closing = true
        vim.schedule(function()
          dispatchers.on_exit(0, 0)
        end)
      end
      return true
    end

    function rpc.is_closing()
      return closing
    end

    function rpc.terminate()
      if not closing then
        vim.schedule(function()
          dispatchers.on_exit(0, 15)
        end)
      end
      closing = true
    end

    server.dispatchers = dispatchers
    return rpc
  end
  return server
end

--- The requests of one method, oldest first.
---@param server cato.test.FakeServer
---@param method string
---@return { method: string, params: table, id: integer }[]
function M.requests(server, method)
  return vim.tbl_filter(function(r)
    return r.method == method
  end, server.requests)
end

return M
