"""`data_tools.prepare` as an Apache Beam pipeline (`python -m data_tools.beam_prepare`).

The pipeline runs the same code as the local path (readers, filtering, split,
writer, embed, `alterrec_tf.formats.schema`), each step called per element or
per key, and writes the same folder:

  read (`read.py`): the raw file -> item lines (one worker per input file, the
      reader's own cleaning) -> GroupByKey on the session id ->
      `readers.lines.build_session` per session; catalogue and item origins
      alongside. Layouts that come as sessions (amazon_m2, recbole) are read by
      their reader in one step (their rules span files: answer files, random
      hold-out, leave-one-out rows).
  select (`select.py`): the frequency filter as unrolled passes over the
      sessions PCollection (item counts per pass, rare items as a side input,
      `filtering.drop_from_session` per session), the split, truncation and
      the removal of items never seen in training.
  text (`text.py`): the vocabulary file, then the distinct item texts in
      batches (BatchElements) through a DoFn that loads the sentence model once
      per worker (`setup`), item vectors = `embed.mean_field_vector` per item.
  write (`write.py`): TFRecord shards written by a DoFn per (split, shard)
      with `writer.write_shard`, then the manifest, last, from side inputs.

Steps that collect to one worker, and why (each holds a few numbers or strings
per session or item, never the sessions themselves, except where noted):
  * the vocabulary: dense indices are ranks of the sorted item ids, and the
    vocabulary file and the item text table are single files;
  * the split: the purchase-log rule takes the first round(f * N) sessions of
    one global order, so it runs `splits.chronological_user_split` on the
    (session id, user id, timestamp) keys of all sessions and joins the
    assignment back by session id;
  * shard boundaries: shards hold contiguous runs of a split's sessions in
    written order (timestamp, then reader order), so each split's sort keys are
    gathered to cut them like `writer.write_split`; sessions then go to their
    shard by key and each shard is written by its own worker;
  * reading a file of a line layout (pandas, the reader's code) and every step
    of the session layouts' reader;
  * the manifest.

The output folder is written through `writer.atomic_output_dir` by the
launching process: workers write into `<output_dir>.tmp-<pid>`, renamed only
after the pipeline succeeded, so it must be a path that every worker can write
(local for the DirectRunner, a shared mount on a cluster; object stores such as
gs:// are not supported by the rename). The raw input must be readable by the
workers at the same path.
"""
