"""Sinks: durable destinations beside the PUB socket (``[sink.*]`` tables)."""
