-- User commands of CATO; the client itself starts with require('cato').setup().
if vim.g.loaded_cato then
  return
end
vim.g.loaded_cato = true

if vim.fn.has('nvim-0.11') == 0 then
  vim.notify('cato: needs Neovim 0.11 or newer', vim.log.levels.ERROR)
  return
end

local command = vim.api.nvim_create_user_command

command('CatoTranslate', function(args)
  require('cato').translate(args.args)
end, {
  nargs = '?',
  desc = 'Translate the current file into another language',
  complete = function(arg_lead)
    return vim.tbl_filter(function(lang)
      return vim.startswith(lang, arg_lead)
    end, require('cato.config').translate_targets())
  end,
})

command('CatoSummarize', function(args)
  if args.range > 0 then
    require('cato').summarize(args.line1, args.line2)
  else
    require('cato').summarize()
  end
end, { range = true, desc = 'Write a docstring for the enclosing function or the range' })

command('CatoGenerate', function(args)
  if args.range > 0 then
    require('cato').generate(args.line1, args.line2)
  else
    require('cato').generate()
  end
end, { range = true, desc = 'Write the code the comment at the cursor (or the range) describes' })

command('CatoStatus', function()
  require('cato').status()
end, { desc = 'Show the state of the CATO service' })

command('CatoCancel', function()
  require('cato').cancel()
end, { desc = 'Cancel the translation or summary in progress' })
