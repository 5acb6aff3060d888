"""3D bone surface reconstruction from labelled sweeps, and its distances to a reference surface."""
