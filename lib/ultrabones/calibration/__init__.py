"""Paper section 3.1, System Calibration: Z-phantom wire detection, the CT bone model, CT-to-marker registration,
spatio-temporal probe calibration."""
