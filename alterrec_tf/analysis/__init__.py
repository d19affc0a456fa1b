"""Analysis of finished runs: long-tail groups and report figures."""
