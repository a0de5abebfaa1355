"""The device link (docs/LINK_PROTOCOL.md): a sans-I/O core that runs unchanged

Kept empty so a board imports only the modules it uses; the CPython API is
``edgistry.firmware.link.api``.
"""
