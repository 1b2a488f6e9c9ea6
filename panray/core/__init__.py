"""panray.core: the Ray-free cores (events in, actions out) that the thin actors in panray.actors drive.

Nothing here imports Ray, so every policy and state machine is tested without a cluster.
"""
