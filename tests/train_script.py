"""Test helper run as a subprocess (plain or under torch.distributed.run): a tiny pre-training job.

usage: train_script.py STORE OUT STEPS [SAVE_EVERY [DROPOUT]]

With ``ROWS_LOG=1`` in the environment each rank appends ``step rows...`` per micro-batch to
``OUT/rows-r{RANK}.txt`` (what that rank trained on).
"""

import os
import sys

import torch

from hubert_ecg.model import create_model
from hubert_ecg.pretraining.objective import PretrainObjective
from hubert_ecg.store import ECGStore
from hubert_ecg.training import TrainConfig, train

store_path, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
save_every = int(sys.argv[4]) if len(sys.argv) > 4 else steps
dropout = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
torch.manual_seed(0)
torch.set_num_threads(1)
model = create_model(
    "tiny",
    vocab_sizes=[4],
    hidden_dropout=dropout,
    attention_dropout=dropout,
    activation_dropout=dropout,
    layerdrop=0.0,
)
store = ECGStore(store_path)
rows = store.rows()
objective = PretrainObjective(model, store, ["fake"], rows[:-4], rows[-4:], global_batch=8)
if os.environ.get("ROWS_LOG"):
    real = objective.training_loss

    def logged(module, batch, step, env, **kw):
        with open(os.path.join(out, f"rows-r{env.rank}.txt"), "a") as fh:
            fh.write(" ".join(str(v) for v in [step, *batch["rows"].tolist()]) + "\n")
        return real(module, batch, step, env, **kw)

    os.makedirs(out, exist_ok=True)
    objective.training_loss = logged
cfg = TrainConfig(
    out_dir=out,
    max_steps=steps,
    batch_size=8,
    lr=2e-3,
    val_every=steps,
    save_every=save_every,
    log_every=1,
    num_workers=0,
    progress=False,
    deterministic=True,
    warmup_fraction=0.2,
)
train(model, objective, cfg)
