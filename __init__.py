"""Edgistry: a distributed edge registry for the Internet of Things.

Devices are servers hosting small services; applications are their clients. A
registry replicated by CometBFT (``edgistry.abci_app``) is kept beside a gateway
per node (``edgistry.gateway``); devices run ``edgistry.firmware``.
"""

__version__ = "0.1.0"
