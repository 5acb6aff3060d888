"""Paper section 3.2: training data, the U-Net/FPN model under Lightning, checkpoints, inference."""
