"""The Python SDK's implementation; import it as ``edgistry.client`` (the root module re-exports
the public API). Modules: ``sync`` and ``aio`` (the clients), ``base`` (shared request
building), ``models`` (values), ``errors`` (the exception tree), ``retry`` (backoff),
``transport`` (addresses, TLS), ``tokens`` (token sources), ``rich_status`` (RetryInfo),
and ``cliglue``, what the ``edgistry`` commands add on top (options, messages, exit codes)."""
