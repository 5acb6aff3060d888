"""Paper section 3.1, automatic bone labels: Eq. 2 per frame, the global-registration baseline, labelling a dataset."""
