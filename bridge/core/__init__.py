"""The pure core: decisions made from values alone (no network, files, AWS or provider clients).

Everything here can be tested with a table of inputs and expected outputs; the layers above (config,
adapters, engine, server, action) feed it values and act on its answers.
"""
