"""Device twins: desired state set by owners, delivered as the delta a device has not
applied at its next wake; reported state readable without waking it (docs/TWINS.md).

``model.py`` holds the rules (pure), the store's ``twin_ops.py`` applies them
durably, ``service.py`` authorises and serves them, ``grpc_service.py`` is the
gRPC adapter and ``cli.py`` the ``edgistry twin`` commands.
"""
