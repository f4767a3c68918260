"""Pure logic: config, settings, the gate, lineage, drift, cleanup plans and the model families.

Nothing here imports the rest of the project or talks to an outside system.
"""
