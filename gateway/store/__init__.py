"""The gateway's durable store.

``store.py`` is what the rest of the gateway uses (reads, and write
submission); ``records.py`` is what is stored, ``keys.py`` where; ``ops.py``
holds every write, one handler per operation over the transaction view of
``kv.py``; ``child.py`` is the one writer process that applies them with group
commit, ``writer.py`` its client on the event loop, ``wire.py`` what the two
say over the pipe.
"""
