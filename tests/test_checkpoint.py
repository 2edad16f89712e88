"""Checkpoint loading: HF directories, both weight-norm spellings, pickled .pt configs, hostile pickles, hub cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import hubert_ecg
from hf_reference import hf_config_dict
from hubert_ecg.checkpoint import CheckpointError, load_model
from hubert_ecg.config import HeadConfig
from hubert_ecg.model import create_model

X = torch.randn(2, 6000, generator=torch.Generator().manual_seed(0))


def _published_state(model, parametrized: bool = True) -> dict:
    """Our weights under the published key names (parametrization spelling or weight_g/weight_v)."""
    state = {}
    for k, v in model.state_dict().items():
        if parametrized:
            k = k.replace("conv.weight_g", "conv.parametrizations.weight.original0")
            k = k.replace("conv.weight_v", "conv.parametrizations.weight.original1")
        if k.startswith("classifier.label_embedding"):
            k = "label_embedding.weight"
        state[k] = v.clone()
    return state


def _write_hf_dir(tmp_path: Path, model, parametrized: bool = True, bin_format: bool = False) -> Path:
    d = tmp_path / "hf"
    d.mkdir()
    cfg = hf_config_dict(model.config)
    cfg.update(
        architectures=["HuBERTECG"],
        auto_map={"AutoConfig": "hubert_ecg.HuBERTECGConfig"},
        transformers_version="4.38.1",
        vocab_sizes=[999],
    )  # stale on purpose: weights decide
    (d / "config.json").write_text(json.dumps(cfg))
    state = _published_state(model, parametrized)
    if bin_format:
        torch.save(state, d / "pytorch_model.bin")
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(d / "model.safetensors"))
    return d


def _same_outputs(a, b) -> None:
    with torch.no_grad():
        torch.testing.assert_close(
            a(X, output_hidden_states=True).last_hidden_state,
            b(X, output_hidden_states=True).last_hidden_state,
            atol=0,
            rtol=0,
        )


@pytest.mark.parametrize("parametrized,bin_format", [(True, False), (False, False), (True, True)])
def test_hf_directory_loads_and_converts_identically(tmp_path, parametrized, bin_format):
    src = create_model("tiny", vocab_sizes=[12]).eval()
    del_key = {k: v for k, v in src.state_dict().items()}
    hf_dir = _write_hf_dir(tmp_path, src, parametrized, bin_format)
    loaded = load_model(hf_dir)
    assert not loaded.training
    assert loaded.config.vocab_sizes == (12,)
    _same_outputs(src, loaded)
    logits = loaded.codebook_logits(loaded(X).last_hidden_state)
    assert logits[0].shape == (2, 93, 12)
    ours = tmp_path / "ours"
    loaded.save_pretrained(ours)
    again = load_model(ours)
    _same_outputs(loaded, again)
    assert del_key.keys() == again.state_dict().keys()


def test_missing_optional_keys_are_accepted(tmp_path):
    src = create_model("tiny").eval()
    d = _write_hf_dir(tmp_path, src)
    state = {k: v for k, v in _published_state(src).items() if k != "masked_spec_embed"}
    save_file(state, str(d / "model.safetensors"))
    loaded = load_model(d)
    assert loaded.config.vocab_sizes == () and not loaded.config.use_mask_embedding
    _same_outputs(src, loaded)


def test_wrong_shapes_and_unknown_keys_are_clear_errors(tmp_path):
    src = create_model("tiny").eval()
    d = _write_hf_dir(tmp_path, src)
    state = _published_state(src)
    state["encoder.bogus.weight"] = torch.zeros(1)
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected 1 keys \(e\.g\. encoder\.bogus\.weight\)"):
        load_model(d)


class _FakeHuBERTECGConfig:
    """Pickled under the reference's class path hubert_ecg.HuBERTECGConfig."""


def _pickle_with_reference_config(tmp_path: Path, model, finetuned: bool = False) -> Path:
    cfg = _FakeHuBERTECGConfig()
    cfg.__dict__.update(hf_config_dict(model.config))
    _FakeHuBERTECGConfig.__module__ = "hubert_ecg"
    _FakeHuBERTECGConfig.__qualname__ = "HuBERTECGConfig"
    hubert_ecg.HuBERTECGConfig = _FakeHuBERTECGConfig  # only so that pickle can write the path
    try:
        state = _published_state(model)
        if finetuned:
            state = {
                "hubert_ecg." + k if not k.startswith(("classifier", "label_embedding")) else k: v
                for k, v in state.items()
            }
        payload = {
            "global_step": 10,
            "model_config": cfg,
            "model_state_dict": state,
            "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0]}]},
            "best_val_loss": torch.tensor(1.5),
        }
        if finetuned:
            payload.update(linear=True, finetuning_vocab_size=model.config.head.num_labels, use_label_embedding=False)
        path = tmp_path / "ckpt.pt"
        torch.save(payload, path)
    finally:
        del hubert_ecg.HuBERTECGConfig
    return path


@pytest.mark.parametrize("finetuned", [False, True])
def test_reference_pt_with_pickled_config_loads(tmp_path, finetuned):
    head = HeadConfig(5) if finetuned else None
    src = create_model("tiny", vocab_sizes=[] if finetuned else [9], head=head).eval()
    path = _pickle_with_reference_config(tmp_path, src, finetuned)
    loaded = load_model(path)
    _same_outputs(src, loaded)
    if finetuned:
        assert loaded.config.head.type == "linear" and loaded.config.head.num_labels == 5
        torch.testing.assert_close(src(X).logits, loaded(X).logits)


def test_pt_with_transformers_config_loads_without_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    src = create_model("tiny", vocab_sizes=[9]).eval()
    skip = ("model_type", "vocab_sizes", "ensemble_length")
    cfg = {k: v for k, v in hf_config_dict(src.config).items() if k not in skip}
    payload = {"model_config": transformers.HubertConfig(**cfg), "model_state_dict": _published_state(src)}
    path = tmp_path / "old.pt"
    torch.save(payload, path)
    torch.save(src(X).last_hidden_state.detach(), tmp_path / "expected.pt")
    # A fresh interpreter in which importing transformers fails.
    code = (
        "import sys, torch; sys.modules['transformers'] = None\n"
        "from hubert_ecg import load_model\n"
        f"m = load_model({str(path)!r})\n"
        f"x = torch.randn(2, 6000, generator=torch.Generator().manual_seed(0))\n"
        f"e = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "assert torch.equal(m(x).last_hidden_state, e)\n"
        "assert 'transformers' not in [k for k, v in sys.modules.items() if v is not None]\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pt_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    path = tmp_path / "evil.pt"
    torch.save({"model_config": evil, "model_state_dict": {}}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "evil.pt" in message and ("posix.system" in message or "os.system" in message)
    assert "\n" not in message
    assert not marker.exists()


def test_corrupt_and_missing_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "truncated.pt"
    src = create_model("tiny")
    torch.save(src.state_dict(), bad)
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "nope.pt")


def test_our_format_verifies_checksum(tmp_path):
    src = create_model("tiny")
    src.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_model(tmp_path / "m")


def test_hub_id_resolves_from_offline_cache(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    src = create_model("tiny", vocab_sizes=[4]).eval()
    cache = tmp_path / "hub"
    repo = cache / "models--Edoardo-BS--hubert-ecg-small"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.parent.mkdir(parents=True)
    hf_dir = _write_hf_dir(tmp_path, src)
    hf_dir.rename(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    loaded = load_model("Edoardo-BS/hubert-ecg-small")
    _same_outputs(src, loaded)
    # The hint names the command this huggingface_hub installs (`hf` from 1.0 on, else `huggingface-cli`).
    import huggingface_hub

    command = "hf download" if int(huggingface_hub.__version__.split(".")[0]) >= 1 else "huggingface-cli download"
    with pytest.raises(CheckpointError, match=f"`{command} Edoardo-BS/hubert-ecg-base --local-dir DIR`"):
        load_model("Edoardo-BS/hubert-ecg-base")


@pytest.mark.parametrize(
    "kind,licence",
    [
        ("published-pt", "cc-by-nc-4.0"),
        ("published-hf", "cc-by-nc-4.0"),
        ("bare-state-dict", "other"),
        ("transformers-dir", "other"),
    ],
)
def test_licence_of_foreign_weights_is_carried_into_saved_models(tmp_path, kind, licence):
    """Published weights (CC BY-NC 4.0) pass their licence on; other foreign weights record their source."""
    src = create_model("tiny", vocab_sizes=[4]).eval()
    if kind == "published-pt":
        path = _pickle_with_reference_config(tmp_path, src)
    elif kind == "published-hf":
        path = _write_hf_dir(tmp_path, src)
    elif kind == "bare-state-dict":
        path = tmp_path / "weights.pt"
        torch.save(src.state_dict(), path)
    else:
        path = _write_hf_dir(tmp_path, src)
        cfg = json.loads((path / "config.json").read_text())
        cfg.update(model_type="hubert", architectures=["HubertModel"])
        del cfg["auto_map"]
        (path / "config.json").write_text(json.dumps(cfg))
    loaded = load_model(path)
    assert loaded.info.extra.get("license") == (licence if licence != "other" else None)
    assert loaded.info.extra["base_model"] == path.name or loaded.info.extra["base_model"] == str(path)
    saved = loaded.save_pretrained(tmp_path / "out")
    card = (saved / "README.md").read_text()
    assert f"license: {licence}\n" in card
    assert load_model(saved).info.extra == loaded.info.extra  # and so on to anything fine-tuned from it
