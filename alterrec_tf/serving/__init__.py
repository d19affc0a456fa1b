"""TF Serving: the exported tf.Module, its checks and its warm-up requests."""
