"""The device runtime (CPython side of a device): home, state, services, duty cycle.

Kept empty so a board imports only the modules it uses; the CPython API is
``edgistry.firmware.runtime.api``.
"""
