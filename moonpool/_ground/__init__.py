"""The ground layer: the seeded state of the simulation run in progress.

Everything simulated -- the network, storage, the transport's seeded ids, buggify
sites -- consults the run through this package, which imports nothing else of
moonpool.  The runtime (``moonpool.sim``) sits above it and sets the run up;
the layers in between only read it, so arrows point downward (DESIGN.md rule 5).
"""
