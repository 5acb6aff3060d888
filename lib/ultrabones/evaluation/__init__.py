"""Paper sections 3.2 and 4: distance-thresholded accuracy, completeness and F1 (Eqs. 3-6), the Otsu split."""
