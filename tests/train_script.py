"""Test helper run as a subprocess (plain or under torch.distributed.run): a tiny pre-training job.

usage: train_script.py STORE OUT STEPS [SAVE_EVERY]
"""

import sys

import torch

from hubert_ecg.model import create_model
from hubert_ecg.pretraining.objective import PretrainObjective
from hubert_ecg.store import ECGStore
from hubert_ecg.training import TrainConfig, train

store_path, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
save_every = int(sys.argv[4]) if len(sys.argv) > 4 else steps
torch.manual_seed(0)
torch.set_num_threads(1)
model = create_model("tiny", vocab_sizes=[4], hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                     layerdrop=0.0)
store = ECGStore(store_path)
rows = store.rows()
objective = PretrainObjective(model, store, ["fake"], rows[:-4], rows[-4:], global_batch=8)
cfg = TrainConfig(out_dir=out, max_steps=steps, batch_size=8, lr=2e-3, val_every=steps, save_every=save_every,
                  log_every=1, num_workers=0, progress=False, deterministic=True, warmup_fraction=0.2)
train(model, objective, cfg)
