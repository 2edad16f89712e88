"""Hugging Face round trip: what we save loads in transformers (no remote code) with equal hidden states and
back into ours with everything; Hub ids with revisions from a local cache; push_to_hub with the HTTP layer
replaced; model cards; ModelOutput behaviour; saving never deletes files that are not ours."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import hubert_ecg
from hf_reference import hf_config_dict
from hubert_ecg import hub
from hubert_ecg.checkpoint import CheckpointError, load_model, update_saved_info
from hubert_ecg.cli import main
from hubert_ecg.config import HeadConfig
from hubert_ecg.model import HubertECG, create_model

X = torch.randn(2, 6000, generator=torch.Generator().manual_seed(0))
SPEC = {"fs": 100, "band": [0.05, 47.0], "scaling": "minmax"}


def _finetuned(head_type: str = "linear") -> HubertECG:
    model = create_model("tiny", vocab_sizes=[7, 5], head=HeadConfig(3, type=head_type, hidden_size=16)).eval()
    model.info.task = "multi_label"
    model.info.label_names = ["AF", "LBBB", "RBBB"]
    model.info.thresholds = [0.25, 0.5, 0.75]
    model.info.preprocessing = dict(SPEC)
    model.info.kmeans = ["kmeans/iter1.safetensors"]
    return model


def _assert_same_model(a: HubertECG, b: HubertECG) -> None:
    assert a.config == b.config
    assert a.info.to_dict() == b.info.to_dict()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    with torch.no_grad():
        oa, ob = a(X), b(X)
        assert torch.equal(oa.last_hidden_state, ob.last_hidden_state)
        if a.classifier is not None:
            assert torch.equal(oa.logits, ob.logits)
        for la, lb in zip(a.codebook_logits(oa.last_hidden_state), b.codebook_logits(ob.last_hidden_state)):
            assert torch.equal(la, lb)


def _assert_transformers_matches(directory: Path, ours: HubertECG) -> None:
    transformers = pytest.importorskip("transformers")
    with torch.no_grad():
        expected = ours(X, output_hidden_states=True).hidden_states
    for cls in (transformers.HubertModel, transformers.AutoModel):
        hf, loading = cls.from_pretrained(str(directory), output_loading_info=True)
        assert type(hf).__name__ == "HubertModel"
        assert not loading["missing_keys"] and not loading["mismatched_keys"], loading
        hf.eval()
        with torch.no_grad():
            got = hf(X, output_hidden_states=True).hidden_states
        assert len(got) == len(expected) == ours.config.num_hidden_layers + 1
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, atol=1e-4, rtol=0)


@pytest.mark.parametrize("head_type", ["linear", "mlp", "cosine"])
def test_saved_model_loads_back_with_everything(tmp_path, head_type):
    model = _finetuned(head_type)
    directory = model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in directory.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    _assert_same_model(model, HubertECG.from_pretrained(directory))
    _assert_same_model(model, load_model(directory))


def test_saved_model_loads_in_transformers_with_equal_hidden_states(tmp_path):
    model = _finetuned()
    directory = model.save_pretrained(tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "hubert" and config["architectures"] == ["HubertModel"]
    assert "auto_map" not in config  # nothing for trust_remote_code to run
    assert config["id2label"] == {"0": "AF", "1": "LBBB", "2": "RBBB"}
    assert config["hubert_ecg"]["info"]["thresholds"] == [0.25, 0.5, 0.75]
    _assert_transformers_matches(directory, model)


@pytest.mark.slow  # a second transformers round trip, through the CLI
def test_convert_of_published_weights_goes_to_transformers_and_carries_the_licence(tmp_path, capsys):
    src = create_model("tiny", vocab_sizes=[9]).eval()
    published = tmp_path / "published"
    published.mkdir()
    cfg = hf_config_dict(src.config)
    cfg.update(architectures=["HuBERTECG"], auto_map={"AutoModel": "hubert_ecg.HuBERTECG"})
    (published / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(published / "model.safetensors"))
    assert main(["convert", str(published), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    _assert_transformers_matches(out, src)
    loaded = load_model(out)
    assert loaded.info.extra["license"] == "cc-by-nc-4.0"
    card = _card(out)
    assert card.data.license == "cc-by-nc-4.0"
    assert "CC BY-NC 4.0" in card.text and "Not a medical device" in card.text


def test_earlier_format_still_reads(tmp_path):
    model = _finetuned()
    directory = tmp_path / "v1"
    directory.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(
        json.dumps(
            {
                "format": "hubert-ecg",
                "format_version": 1,
                "model": model.config.to_dict(),
                "info": model.info.to_dict(),
                "weights_sha256": hub.sha256_file(directory / "model.safetensors"),
            }
        )
    )
    _assert_same_model(model, load_model(directory))


# ---------------------------------------------------------------------------------------------
# Model cards
# ---------------------------------------------------------------------------------------------
def _card(directory: Path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    return huggingface_hub.ModelCard.load(directory / "README.md")


def test_model_card_of_a_fresh_model_with_run_record_and_results(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "format": "hubert-ecg-run",
                "kind": "finetune",
                "command": ["hubert-ecg", "finetune", "store/", "--lr", "3e-5"],
                "settings": {"train": {"lr": 3e-5, "max_steps": 100}},
                "inputs": {"store": {"rows": 1234}},
            }
        )
    )
    (run_dir / "summary.json").write_text(json.dumps({"macro": {"auroc": 0.91}, "macro_ci": {"auroc": [0.88, 0.94]}}))
    directory = _finetuned().save_pretrained(run_dir / "best")
    card = _card(directory)
    assert card.data.license == "apache-2.0"
    assert "hubert-ecg" in card.data.tags and card.data.library_name == "transformers"
    text = card.text
    assert "`hubert-ecg finetune store/ --lr 3e-5`" in text
    assert "| settings.train.lr | 3e-05 |" in text and "| inputs.store.rows | 1234 |" in text
    assert "| auroc | 0.91 | 0.88 - 0.94 |" in text
    assert "| 1 | LBBB | 0.5 |" in text
    assert "Not a medical device" in text and "Intended use" in text


def test_model_card_names_unknown_licence(tmp_path):
    model = create_model("tiny")
    model.info.extra["base_model"] = "someone/else"
    card = _card(model.save_pretrained(tmp_path / "m"))
    assert card.data.license == "other" and card.data.base_model == "someone/else"
    assert "licence is not recorded" in card.text


def test_update_saved_info_keeps_checksum_and_rewrites_card(tmp_path):
    model = _finetuned()
    directory = model.save_pretrained(tmp_path / "m")
    update_saved_info(directory, thresholds=[0.1, 0.2, 0.3])
    loaded = load_model(directory)  # checksum still verified
    assert loaded.info.thresholds == [0.1, 0.2, 0.3]
    assert "| 2 | RBBB | 0.3 |" in (directory / "README.md").read_text()
    with pytest.raises(CheckpointError, match=r"info\.thresholds\[0\] = 2\.0 is outside \[0, 1\]"):
        update_saved_info(directory, thresholds=[2.0, 0.2, 0.3])


# ---------------------------------------------------------------------------------------------
# Hub ids, revisions, push_to_hub
# ---------------------------------------------------------------------------------------------
def _fake_cache(tmp_path: Path, monkeypatch, repo_id: str, snapshots: dict[str, HubertECG], refs: dict[str, str]):
    cache = tmp_path / "hub-cache"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for sha, model in snapshots.items():
        model.save_pretrained(repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True)
    for ref, sha in refs.items():
        (repo / "refs" / ref).write_text(sha)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_hub_id_with_revision_from_local_cache(tmp_path, monkeypatch, capsys):
    pytest.importorskip("huggingface_hub")
    old, new = create_model("tiny", vocab_sizes=[3]).eval(), create_model("tiny", vocab_sizes=[4]).eval()
    old_sha, new_sha = "1" * 40, "2" * 40
    _fake_cache(tmp_path, monkeypatch, "lab/ecg-model", {old_sha: old, new_sha: new}, {"main": new_sha, "v1": old_sha})
    assert load_model("lab/ecg-model").config.vocab_sizes == (4,)
    assert load_model("lab/ecg-model@v1").config.vocab_sizes == (3,)
    assert HubertECG.from_pretrained("lab/ecg-model", revision=old_sha).config.vocab_sizes == (3,)
    assert hubert_ecg.load_model(f"lab/ecg-model@{old_sha}").config.vocab_sizes == (3,)
    capsys.readouterr()
    assert main(["info", "lab/ecg-model@v1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["codebooks"] == [3]
    with pytest.raises(CheckpointError, match=r"revision given twice \(v1 and revision=main\)"):
        load_model("lab/ecg-model@v1", revision="main")
    with pytest.raises(CheckpointError, match="--revision v9 --local-dir DIR"):
        load_model("lab/ecg-model@v9")


def test_push_to_hub_uploads_a_loadable_folder(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    import inspect

    calls = {}
    real = {name: inspect.signature(getattr(huggingface_hub.HfApi, name)) for name in ("create_repo", "upload_folder")}

    def create_repo(self, repo_id, **kwargs):
        real["create_repo"].bind(self, repo_id, **kwargs)  # the call fits the installed huggingface_hub
        calls["create_repo"] = (repo_id, kwargs)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        real["upload_folder"].bind(self, **kwargs)
        calls["upload_folder"] = kwargs
        shutil.copytree(kwargs["folder_path"], tmp_path / "uploaded")
        return "commit-info"

    def no_network(*args, **kwargs):
        raise AssertionError("network access in an offline test")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", no_network)
    model = _finetuned()
    assert model.push_to_hub("lab/my-ecg", private=True, revision="dev") == "commit-info"
    assert calls["create_repo"] == ("lab/my-ecg", {"private": True, "exist_ok": True, "repo_type": "model"})
    upload = calls["upload_folder"]
    assert upload["repo_id"] == "lab/my-ecg" and upload["revision"] == "dev" and upload["repo_type"] == "model"
    uploaded = sorted(p.name for p in (tmp_path / "uploaded").iterdir())
    assert uploaded == ["README.md", "config.json", "model.safetensors"]
    _assert_same_model(model, load_model(tmp_path / "uploaded"))


# ---------------------------------------------------------------------------------------------
# Model outputs behave like transformers' ModelOutput
# ---------------------------------------------------------------------------------------------
def test_model_output_attribute_key_and_index_access():
    model = _finetuned()
    with torch.no_grad():
        out = model(X)
    assert out.keys() == ["last_hidden_state", "pooled", "logits"]
    assert out[0] is out.last_hidden_state is out["last_hidden_state"]
    assert out[2] is out.logits is out["logits"] and out[-1] is out.logits
    assert out.to_tuple() == (out.last_hidden_state, out.pooled, out.logits)
    assert list(out) == out.keys() and "logits" in out and "hidden_states" not in out
    with pytest.raises(KeyError, match="hidden_states"):
        out["hidden_states"]
    with torch.no_grad():
        full = model(X, output_hidden_states=True)
    assert full[1] is full.hidden_states and len(full.to_tuple()) == 4


# ---------------------------------------------------------------------------------------------
# Saving never deletes user files
# ---------------------------------------------------------------------------------------------
def test_saving_into_a_folder_of_other_files_is_refused(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.docx").write_text("years of work")
    (folder / "config.json").write_text('{"lr": 1}')  # a config.json that is not a model's
    model = create_model("tiny")
    with pytest.raises(CheckpointError, match="refusing to write a model into a non-empty folder"):
        model.save_pretrained(folder)
    source = model.save_pretrained(tmp_path / "src")
    capsys.readouterr()
    assert main(["convert", str(source), "--out", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mine" in err and "thesis.docx" in err
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "thesis.docx"]
    assert (folder / "thesis.docx").read_text() == "years of work"


def test_saving_over_our_model_replaces_only_our_files(tmp_path, capsys):
    first, second = create_model("tiny", vocab_sizes=[3]), create_model("tiny", vocab_sizes=[4])
    folder = first.save_pretrained(tmp_path / "m")
    (folder / "notes.txt").write_text("keep me")
    (folder / "metrics.json").write_text("{}")
    second.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "metrics.json",
        "model.safetensors",
        "notes.txt",
    ]
    assert load_model(folder).config.vocab_sizes == (4,)
    assert (folder / "notes.txt").read_text() == "keep me"
    source = first.save_pretrained(tmp_path / "src")
    assert main(["convert", str(source), "--out", str(folder)]) == 0
    assert load_model(folder).config.vocab_sizes == (3,) and (folder / "notes.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_model(first.save_pretrained(empty)).config.vocab_sizes == (3,)
    assert not list(tmp_path.glob("**/*.tmp"))


# ---------------------------------------------------------------------------------------------
# Layering: the save/load mixin never imports the network module; the network imports nothing above it
# ---------------------------------------------------------------------------------------------
def _package_imports(module_file: Path) -> set[str]:
    tree = ast.parse(module_file.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            found.add(node.module or "")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hubert_ecg"):
            found.add(node.module.removeprefix("hubert_ecg."))
    return found


def test_mixin_and_model_import_direction():
    package = Path(hubert_ecg.__file__).parent
    assert _package_imports(package / "hub.py") <= {"atomic", "config", "safe_pickle"}
    assert _package_imports(package / "safe_pickle.py") == set()
    model_imports = _package_imports(package / "model.py")
    assert not model_imports & {"checkpoint", "inference", "evaluate", "training", "finetune", "export"}
