"""tf.data input: TFRecord sessions -> prefix windows (`windows`), and the
one-row-per-prefix reference (`per_prefix`)."""
