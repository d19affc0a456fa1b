"""The bridge to RecBole's implementations of the baselines (issue 35).

`atomic` writes a prepared dataset's scored prefixes as RecBole atomic benchmark
files (one row per scored prefix, in our order, so RecBole trains and is scored on
exactly our protocol); `lists` turns the top-k lists RecBole's models produce for
those rows (`peers/recbole_run.py`, in its own virtual environment) into a run
folder our report reads. Neither imports RecBole or torch.
"""
