"""Delivery: the durable spool, the forwarder and the output formats (HTTPS, local files), TLS.

May import: nothing else of the sensor (alerts arrive as plain JSON-ready dicts).
"""
