"""Stores: where the broker keeps sessions and retained messages.

Every store provides :class:`mqtt_twisted.interfaces.IStore`; the memory store
is the default, others are found as ``IStorePlugin`` plugins.
"""
