"""Test helper run as a subprocess (plain or under torch.distributed.run): a tiny fine-tuning job.

usage: finetune_script.py STORE OUT STEPS [LP_STEPS]

Dropout is off so that one process and N processes draw nothing differently (dropout masks are
per rank); everything else is the default fine-tuning setup (masked_spec_embed present, layerdrop 0,
so DDP runs with find_unused_parameters=False).
"""

import sys

import torch

from hubert_ecg.finetune import FinetuneOptions, run_finetune
from hubert_ecg.training import TrainConfig

store_path, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
lp_steps = int(sys.argv[4]) if len(sys.argv) > 4 else 0
torch.set_num_threads(1)
cfg = TrainConfig(
    out_dir=out,
    max_steps=steps,
    batch_size=8,
    lr=2e-3,
    val_every=steps,
    log_every=1,
    num_workers=0,
    progress=False,
    deterministic=True,
    warmup_fraction=0.2,
    device="cpu",
    logger="none",
)
opts = FinetuneOptions(
    task="multi_label",
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    classifier_dropout=0.0,
    train_conv_stem=True,
    monitor="loss",
)
run_finetune(store_path, cfg, opts, random_init_size="tiny", lp_then_ft_steps=lp_steps)
