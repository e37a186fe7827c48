"""The sans-IO broker core: sessions, routing, the per-connection protocol machine.

Nothing here imports the reactor side of Twisted; time comes from an injected
``IReactorTime`` and bytes go out through an ``IConnectionTransport``.
"""
