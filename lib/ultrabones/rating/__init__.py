"""Paper section 3.1, Clinical Evaluation: the blinded rating set, the rating page, Wilcoxon + Bonferroni."""
