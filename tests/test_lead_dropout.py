"""Reduced-lead input: lead sets, zeroing whole leads of the flattened input, lead dropout in training."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hubert_ecg.preprocess import (
    LEAD_NAMES,
    PreprocessError,
    apply_lead_dropout,
    lead_dropout_mask,
    lead_keep_mask,
    parse_lead_set,
    zero_leads,
)


def test_parse_lead_sets() -> None:
    assert parse_lead_set("limb") == ("I", "II", "III", "aVR", "aVL", "aVF")
    assert parse_lead_set("precordial") == ("V1", "V2", "V3", "V4", "V5", "V6")
    assert parse_lead_set("II") == ("II",)
    assert parse_lead_set("v1, avr ,I") == ("I", "aVR", "V1")  # case-insensitive, standard order
    with pytest.raises(ValueError, match="unknown lead 'V7'"):
        parse_lead_set("I,V7")
    with pytest.raises(ValueError, match="names a lead twice"):
        parse_lead_set("I,i")


def test_zero_leads_zeroes_exactly_the_dropped_leads_numpy_and_torch(rng: np.random.Generator) -> None:
    x = rng.normal(size=(3, 12 * 500)).astype(np.float32)
    keep = lead_keep_mask(["II", "V5"])
    for arr in (x, torch.from_numpy(x)):
        out = np.asarray(zero_leads(arr, keep)).reshape(3, 12, 500)
        grid = x.reshape(3, 12, 500)
        for lead, name in enumerate(LEAD_NAMES):
            if name in ("II", "V5"):
                np.testing.assert_array_equal(out[:, lead], grid[:, lead])
            else:
                assert not out[:, lead].any()
    with pytest.raises(PreprocessError, match="does not fit 3 windows"):
        zero_leads(x, np.ones(11, dtype=bool))


def test_lead_dropout_mask_rate_and_at_least_one_lead() -> None:
    rng = np.random.default_rng(0)
    keep = lead_dropout_mask(20000, 0.5, rng)
    assert keep.any(axis=1).all()
    assert keep.mean() == pytest.approx(0.5, abs=0.01)
    heavy = lead_dropout_mask(2000, 0.99, rng)
    assert heavy.any(axis=1).all() and (heavy.sum(axis=1) == 1).mean() > 0.8
    # A record that only has lead I: the lead kept back is always I, never an absent one.
    present = np.zeros((500, 12), dtype=bool)
    present[:, 0] = True
    only_i = lead_dropout_mask(500, 0.9, rng, present)
    assert only_i[:, 0].all() and not only_i[:, 1:].any()
    with pytest.raises(PreprocessError, match=r"must be in \[0, 1\)"):
        lead_dropout_mask(2, 1.0, rng)


def test_apply_lead_dropout_never_blanks_a_one_lead_record() -> None:
    x = torch.zeros(64, 12 * 500)
    x[:, 500:1000] = 1.0  # lead II only, as from a 1-lead strip
    out = apply_lead_dropout(x, 0.9, np.random.default_rng(1))
    assert torch.equal(out, x)


def test_finetune_training_loss_drops_whole_leads_reproducibly() -> None:
    from hubert_ecg.finetune import FinetuneObjective, FinetuneOptions

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x, mask=None):  # noqa: ANN001, ANN201
            seen.append(x.clone())
            return SimpleNamespace(logits=x.sum(dim=1, keepdim=True))

    fake = SimpleNamespace(opts=FinetuneOptions(lead_dropout=0.5), seed=3, loss=lambda logits, labels: logits.sum())
    batch = {"input": torch.randn(16, 6000) + 5.0, "attention_mask": None, "full": True, "labels": torch.zeros(16, 1)}
    env = SimpleNamespace(rank=0, world_size=1)
    for step in (7, 7, 8):
        FinetuneObjective.training_loss(fake, Recorder(), batch, step, env)
    grid = seen[0].reshape(16, 12, 500)
    zeroed = (grid == 0).all(dim=2)
    untouched = (grid == batch["input"].reshape(16, 12, 500)).all(dim=2)
    assert (zeroed | untouched).all()  # whole leads only
    assert zeroed.any() and (~zeroed).any(dim=1).all()
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[2])  # seeded by step
    with pytest.raises(ValueError, match=r"lead_dropout must be in \[0, 1\)"):
        FinetuneOptions(lead_dropout=1.0)


def test_cli_lead_dropout_option_reaches_finetune_options() -> None:
    from hubert_ecg.cli import build_parser
    from hubert_ecg.cli.train_cmds import _finetune_options

    args = build_parser().parse_args(["finetune", "STORE", "--out", "RUN", "--lead-dropout", "0.3"])
    assert _finetune_options(args, {}, {}).lead_dropout == 0.3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "STORE", "--out", "RUN", "--lead-dropout", "1"])


def test_pretrain_training_loss_drops_input_leads_only() -> None:
    from hubert_ecg.pretraining.objective import PretrainObjective, PretrainRun

    captured = {}

    def forward(module, batch, key, offset, global_batch):  # noqa: ANN001, ANN202
        captured.update(batch)
        return batch["input"]

    fake = SimpleNamespace(lead_dropout=0.5, seed=0, _forward=forward)
    targets = torch.arange(16 * 9).reshape(16, 9)
    batch = {"input": torch.randn(16, 6000) + 5.0, "targets": [targets]}
    out = PretrainObjective.training_loss(fake, None, batch, 1, SimpleNamespace(rank=0, world_size=1))
    zeroed = (out.reshape(16, 12, 500) == 0).all(dim=2)
    assert zeroed.any() and (~zeroed).any(dim=1).all()
    assert captured["targets"][0] is targets  # the codebook targets are left as they are
    assert "lead_dropout" in PretrainRun(lead_dropout=0.2).kwargs()


def test_evaluate_leads_option_one_set_per_value() -> None:
    from hubert_ecg.cli import build_parser

    args = build_parser().parse_args(
        ["evaluate", "CKPT", "STORE", "--out", "E", "--leads", "limb", "--leads", "I,II;V1"]
    )
    assert args.leads == [["limb"], ["I,II", "V1"]]
    assert parse_lead_set("I,II") == ("I", "II")  # "--leads I,II" is one two-lead set


def test_predict_and_embed_flag_missing_leads(tmp_path) -> None:
    import csv
    import warnings

    from hubert_ecg.config import CheckpointInfo
    from hubert_ecg.inference import predict_files
    from hubert_ecg.model import create_model

    rng = np.random.default_rng(0)
    header = "I,II,III,aVR,aVL,aVF"
    np.savetxt(tmp_path / "six.csv", rng.normal(0, 0.1, (3000, 6)), delimiter=",", header=header, comments="")
    np.savetxt(
        tmp_path / "full.csv", rng.normal(0, 0.1, (3000, 12)), delimiter=",", header=",".join(LEAD_NAMES), comments=""
    )
    model = create_model("tiny", head={"type": "linear", "num_labels": 1})
    model.info = CheckpointInfo(task="multi_label", label_names=["x"])
    kwargs = {"fs": 500.0, "allow_missing_leads": True, "units": "mV"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mode, out in (("predict", tmp_path / "p.csv"), ("embed", tmp_path / "e.csv")):
            predict_files(
                model,
                [str(tmp_path / "six.csv"), str(tmp_path / "full.csv")],
                out,
                mode=mode,
                read_kwargs=kwargs,
                progress=False,
            )
            rows = {r["record_id"]: r for r in csv.DictReader(out.open())}
            assert rows["six"]["missing_leads"] == "V1,V2,V3,V4,V5,V6", mode
            assert rows["full"]["missing_leads"] == "", mode
