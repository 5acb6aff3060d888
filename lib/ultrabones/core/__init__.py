"""The small core every stage stands on: errors, atomic writes, geometry (Eq. 1), dataset I/O, parameters, paths."""
