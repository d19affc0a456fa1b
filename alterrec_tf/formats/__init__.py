"""On-disk formats: the TFRecord session schema and manifest shared by data_tools and
the trainer, and the new-item table."""
