"""The digital twin: anatomy, CT, B-mode formation, motion and tracking, the Z-phantom recordings, the simulated
annotator and rater, a label's error against the truth, synthetic frames for the labelling's tests, and the
only code that reads the twin's ``truth/``.

Method packages (calibration, labels, rating, segmentation, evaluation, reconstruction) never import this
package: truth only measures (tests/test_architecture.py)."""
