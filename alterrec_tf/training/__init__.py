"""Training loop pieces: the epoch callbacks (phase schedule, evaluation, backup) and full-catalogue evaluation."""
