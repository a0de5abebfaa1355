"""The device program's portable core (runs unchanged on MicroPython and CPython).

Kept empty so a board imports only the modules it uses: ``dev_state`` (durable
state), ``dev_store`` (A/B slots a flash filesystem can hold), ``dev_services``
(services as plain functions), ``dev_core`` (one wake, sans-I/O, and the
backoff rule), ``dev_boot`` (platform checks) and ``dev_mp`` (the MicroPython
port: blocking sockets, ``select``, ``time.sleep``). The CPython port is
``edgistry.firmware.runtime.device``.
"""
