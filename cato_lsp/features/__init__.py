"""The language server's features; `cato_lsp.server` registers them as LSP handlers."""
