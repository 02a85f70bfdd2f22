"""The privacy mechanisms and their numbers, in plain numpy and dp-accounting.

Nothing here imports Beam, Keras or TensorFlow (tests/test_layout.py checks it):
these modules are what an auditor reads, each with its own brute-force or
statistical tests. The Beam stages in transforms/ call them; a stage and its
mechanism share a name (transforms/cluster.py uses mechanisms/cluster.py).

- token_rules: clipping, the top-k mask, the mean rule and sampling (METHOD.md §4)
- median: the median rule and its local sensitivity
- median_ptr: the median behind a propose-test-release stability test
- gate: the public-token gate (sparse vector technique)
- generate: one batch's per-token choice, putting the rules together
- accounting: the ledger and the RDP accountant, and the calibration helpers
- cluster: noisy counts and histograms, DP k-means steps (METHOD.md §2)
- assign_to_batches: how many batches a cluster gets, and which one a record joins (§3)
- record_cap: the --max_records sample
- evolve: Private Evolution's votes and redraw
- release_embeddings: the DP synthetic embeddings release
- randomness: keyed generators and hashes under the run secret
"""
