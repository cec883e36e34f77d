"""Detection: rules (the seed's criteria, Sigma YAML, packs) compiled to one IR, both matchers,
noise control and the alerts a match becomes.

May import: ``sensor.events``. Never a source, the delivery side, the daemon or a command.
"""
