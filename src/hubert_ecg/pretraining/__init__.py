"""Pre-training by masked prediction of cluster ids, as one stage with its own on-disk formats.

``features`` (per-token descriptors) -> ``kmeans`` (codebooks) -> ``targets`` (feature dumps and
int16 labels beside the store) -> ``objective`` (the masked-prediction loss on the shared training
loop) -> ``loop`` (all of it, iterated, from one config file).
"""
