"""The trainer (`trainer.train`) and its pieces: the epoch callbacks (phase schedule,
evaluation, backup), full-catalogue evaluation, alpha tuning, distribution, and
loading a trained run (`loading`)."""
