"""Devices: the mesh, sharding rules, processes, compiled-program inspection,
the compilation cache."""
