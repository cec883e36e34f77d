"""The running sensor: configuration, assembly of the stages, the pipeline threads and their
queues, the health heartbeat, the Windows service host.

May import: every stage (``sources``, ``enrich``, ``detect``, ``deliver``) and ``events``.
Never a command.
"""
