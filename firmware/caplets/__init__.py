"""CAPLets capability tokens (chained HMAC-SHA256).

Kept empty so a board imports only the modules it uses; the CPython API is
``edgistry.firmware.caplets.api``.
"""
