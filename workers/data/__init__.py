"""Data for jobs: dataset artifacts (`datasets`), built-in corpora (`corpus`), importers, the arithmetic task,
the BPE tokenizer and the packing of token ids into training examples (`batches`)."""
