"""Models: layers, towers, negatives and loss, AlterRec, the baselines and floors,
and the registry behind --model."""
