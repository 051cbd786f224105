"""cato-lsp: a language server that turns editor requests into SLA-tagged tasks."""

__version__ = "0.1.0"
