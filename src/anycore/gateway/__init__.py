"""L1 — the gateway: HTTP/1.1 and WebSocket connections from clients, handed to services
through ``anycore.ports`` (see ``server``). ``chunked`` is L0 (pure).
"""
