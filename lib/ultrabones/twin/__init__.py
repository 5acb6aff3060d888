"""The digital twin: anatomy, CT, B-mode formation, motion and tracking, the Z-phantom recordings, the simulated
annotator and rater, and the only code that reads the twin's ``truth/``.

Method packages (calibration, labels, rating, segmentation, evaluation, reconstruction) never import this
package: truth only measures (tests/test_architecture.py)."""
