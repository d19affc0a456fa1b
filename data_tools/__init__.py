"""Raw session logs -> TFRecord datasets for alterrec_tf (see data_tools.prepare)."""
