"""Checkpoint safety: hostile files are refused before anything in them runs, unusable weights are refused
with the tensor/key named, and the allow-list is small enough that widening it makes these tests fail."""

from __future__ import annotations

import builtins
import importlib
import io
import json
import os
import pickle
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import List  # noqa: UP035  (TorchScript reads these annotations)

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_reference import hf_config_dict
from hubert_ecg import safe_pickle
from hubert_ecg.checkpoint import CheckpointError, load_model
from hubert_ecg.cli import main
from hubert_ecg.config import HeadConfig
from hubert_ecg.model import create_model


# ---------------------------------------------------------------------------------------------
# Hostile pickles
# ---------------------------------------------------------------------------------------------
class _Reduce:
    """Pickles as ``func(*args)``: whatever unpickles it calls ``func``."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _write_marker_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


TARGETS = {
    "os.system": lambda m: (os.system, (f"touch {m}",)),
    "builtins.eval": lambda m: (builtins.eval, (_write_marker_code(m),)),
    "builtins.exec": lambda m: (builtins.exec, (_write_marker_code(m),)),
    "builtins.getattr": lambda m: (builtins.getattr, (m, "touch")),
    "subprocess.Popen": lambda m: (subprocess.Popen, (["touch", str(m)],)),
    "importlib.import_module": lambda m: (importlib.import_module, ("antigravity",)),
    "torch.hub.load": lambda m: (torch.hub.load, ("owner/repo", "model")),
    "torch.load": lambda m: (torch.load, (str(m),)),
    "numpy.load": lambda m: (np.load, (str(m),)),
}
NESTINGS = {
    "top": lambda evil: evil,
    "dict": lambda evil: {"model_state_dict": {}, "global_step": 1, "model_config": {"x": evil}},
    "list": lambda evil: {"model_state_dict": {}, "extra": [1, 2, [evil]]},
    "tuple": lambda evil: {"model_state_dict": {}, "extra": (("a", evil),)},
}


def _global_name(func) -> str:
    return f"{func.__module__}.{func.__name__}"


def _hostile_file(tmp_path: Path, target: str, nesting: str, protocol: int, container: str) -> tuple[Path, str]:
    marker = tmp_path / "marker"
    func, args = TARGETS[target](marker)
    payload = NESTINGS[nesting](_Reduce(func, args))
    path = tmp_path / f"hostile-{target}-{nesting}-{protocol}-{container}.pt"
    if container == "zip":
        torch.save(payload, path, pickle_protocol=protocol)
    else:  # a legacy raw pickle (what torch.load reads when the file is not a zip)
        path.write_bytes(pickle.dumps(payload, protocol=protocol))
    return path, _global_name(func)


CASES = [
    (t, n, p, c)
    for i, t in enumerate(TARGETS)
    for p in (2, 4)
    for c in ("zip", "pickle")
    for n in [list(NESTINGS)[(i + p) % len(NESTINGS)]]
]


def _assert_refused(path: Path, capsys, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    capsys.readouterr()
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hubert-ecg: error: ") and err.count("\n") == 1 and path.name in err, err
    return message


@pytest.mark.parametrize("target,nesting,protocol,container", CASES)
def test_hostile_pickle_is_refused_and_nothing_runs(tmp_path, capsys, target, nesting, protocol, container):
    path, name = _hostile_file(tmp_path, target, nesting, protocol, container)
    _assert_refused(path, capsys, f"refusing to load global {name}")
    assert not (tmp_path / "marker").exists()


def test_hand_written_os_system_global_is_refused(tmp_path, capsys):
    # GLOBAL 'os system' spelled out (pickle itself would write posix.system).
    marker = tmp_path / "marker"
    path = tmp_path / "os_system.pt"
    path.write_bytes(
        b"\x80\x02cos\nsystem\nX"
        + len(f"touch {marker}").to_bytes(4, "little")
        + f"touch {marker}".encode()
        + b"\x85R."
    )
    _assert_refused(path, capsys, "refusing to load global os.system")
    assert not marker.exists()


class ScriptedWriter(torch.nn.Module):
    """A TorchScript module whose ``__setstate__`` writes a file when ``torch.jit.load`` restores it."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> List[str]:  # noqa: UP006
        return [self.path]

    @torch.jit.export
    def __setstate__(self, state: List[str]) -> None:  # noqa: UP006
        self.path = state[0]
        self.training = False
        torch.save(torch.zeros(1), self.path)


def test_torchscript_archive_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "marker"
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(ScriptedWriter(str(marker))), str(path))
    _assert_refused(path, capsys, "TorchScript archive")
    assert not marker.exists()
    # The file really is hostile: torch.jit.load runs its __setstate__ (which is why we never call it).
    torch.jit.load(str(path))
    assert marker.exists()


def test_legacy_tar_format_is_refused(tmp_path, capsys):
    # The pre-0.4 torch.save layout (torch can no longer write it): a tar of sys_info, pickle, storages, tensors.
    marker = tmp_path / "marker"
    path = tmp_path / "legacy_tar.pt"
    with tarfile.open(path, "w") as archive:
        for name, data in [
            ("sys_info", pickle.dumps({"protocol_version": 1001, "little_endian": True}, 2)),
            ("pickle", pickle.dumps(_Reduce(os.system, (f"touch {marker}",)), 2)),
            ("storages", pickle.dumps(0, 2)),
            ("tensors", pickle.dumps(0, 2)),
        ]:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    _assert_refused(path, capsys, "legacy tar-format torch.save archive")
    assert not marker.exists()


def _rezip(source: Path, target: Path, extra: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        prefix = src.namelist()[0].split("/")[0]
        for item in src.infolist():
            dst.writestr(item, src.read(item.filename))
        for name, data in extra.items():
            dst.writestr(f"{prefix}/{name}", data)
    return target


@pytest.mark.parametrize(
    "member,fragment",
    [
        ("extra.pkl", "extra pickle member (extra.pkl)"),
        ("data/extra.pkl", "extra pickle member (data/extra.pkl)"),
        ("constants.pkl", "TorchScript archive"),
        ("code/__torch__.py", "TorchScript archive"),
        ("notes.txt", "unexpected member (notes.txt)"),
    ],
)
def test_zip_with_extra_members_is_refused(tmp_path, capsys, member, fragment):
    marker = tmp_path / "marker"
    plain = tmp_path / "plain.pt"
    torch.save(create_model("tiny").state_dict(), plain)
    path = _rezip(plain, tmp_path / "extra.pt", {member: pickle.dumps(_Reduce(os.system, (f"touch {marker}",)), 2)})
    _assert_refused(path, capsys, fragment)
    assert not marker.exists()


def test_not_a_checkpoint_at_all_is_refused(tmp_path, capsys):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    _assert_refused(path, capsys, "not a readable PyTorch checkpoint")


# ---------------------------------------------------------------------------------------------
# The allow-list: exactly this, and the corpus fails when it is widened
# ---------------------------------------------------------------------------------------------
def test_allow_list_is_small_and_explicit():
    dtypes = {
        ("torch", n)
        for n in (
            "float64",
            "float32",
            "float16",
            "bfloat16",
            "complex64",
            "complex128",
            "int64",
            "int32",
            "int16",
            "int8",
            "uint8",
            "bool",
            "float8_e4m3fn",
            "float8_e5m2",
        )
        if isinstance(getattr(torch, n, None), torch.dtype)
    }
    assert set(safe_pickle.ALLOWED_GLOBALS) == dtypes | {
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "slice"),
        ("builtins", "complex"),
        ("builtins", "object"),
        ("copyreg", "_reconstructor"),
        ("torch", "Size"),
        ("torch", "device"),
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
    }
    assert safe_pickle.PUBLISHED_CONFIG_CLASSES == {
        ("hubert_ecg", "HuBERTECGConfig"),
        ("transformers.models.hubert.configuration_hubert", "HubertConfig"),
    }
    assert all(
        m in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "_codecs")
        for m, _ in safe_pickle.NUMPY_GLOBALS
    )
    assert len(safe_pickle.NUMPY_GLOBALS) == 7


class _Widened(dict):
    """The allow-list plus every name of some modules (what a careless 'fix' might do)."""

    def __init__(self, base, modules):
        super().__init__(base)
        self.modules = modules

    def __contains__(self, key):
        return super().__contains__(key) or key[0].split(".")[0] in self.modules

    def __getitem__(self, key):
        if super().__contains__(key):
            return super().__getitem__(key)
        module = importlib.import_module(key[0])
        return getattr(module, key[1])


@pytest.mark.parametrize("modules,target", [({"builtins"}, "builtins.exec"), ({"torch"}, "torch.load")])
def test_widening_the_allow_list_lets_a_hostile_file_through(tmp_path, monkeypatch, modules, target):
    """Proves the corpus above can fail: with all of builtins (or torch) allowed, the same file is no longer
    refused as unsafe (exec writes the marker; torch.load is called and fails on its own)."""
    path, _ = _hostile_file(tmp_path, target, "top", 2, "zip")
    monkeypatch.setattr(safe_pickle, "ALLOWED_GLOBALS", _Widened(safe_pickle.ALLOWED_GLOBALS, modules))
    try:
        load_model(path)
    except CheckpointError as err:
        assert "refusing to load global" not in str(err)
    except Exception:  # noqa: BLE001  (the hostile call ran and failed in its own way)
        pass
    if target == "builtins.exec":
        assert (tmp_path / "marker").exists()


def test_each_core_entry_is_what_a_real_checkpoint_uses(tmp_path):
    """A published-style training file (Parameters, OrderedDict, pickled config, numpy scalar, dtype, Size)
    loads; every allow-list entry it resolves is in the list (and nothing else is needed)."""
    import pickletools

    src = create_model("tiny", vocab_sizes=[5]).eval()
    state = {k: torch.nn.Parameter(v.clone()) if v.is_floating_point() else v for k, v in src.state_dict().items()}
    payload = {
        "model_state_dict": state,
        "global_step": 3,
        "best_val_loss": np.float64(1.5),
        "dtype": torch.float32,
        "shape": torch.Size([2, 3]),
        "model_config": hf_config_dict(src.config),
    }
    path = tmp_path / "train.pt"
    torch.save(payload, path)
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    strings, used = [], set()
    for op, arg, _ in pickletools.genops(data):
        if isinstance(arg, str):
            strings.append(arg)
        if op.name == "STACK_GLOBAL":
            used.add((strings[-2], strings[-1]))
        elif op.name == "GLOBAL":
            used.add(tuple(arg.split(" ", 1)))
    used = {u for u in used if "Storage" not in u[1]}  # torch resolves storage types itself
    allowed = set(safe_pickle.ALLOWED_GLOBALS) | set(safe_pickle.NUMPY_GLOBALS)
    assert used <= allowed and ("torch._utils", "_rebuild_parameter") in used
    model = load_model(path)
    for key, value in src.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


# ---------------------------------------------------------------------------------------------
# Unusable weights: refused with the tensor or key named
# ---------------------------------------------------------------------------------------------
def _edit_config(directory: Path, edit) -> None:
    config = json.loads((directory / "config.json").read_text())
    edit(config["hubert_ecg"])
    (directory / "config.json").write_text(json.dumps(config))


def _cli_refuses(path: Path, capsys, fragment: str) -> None:
    capsys.readouterr()
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("layout", ["ours", "hf", "pt"])
def test_non_finite_weights_are_refused(tmp_path, capsys, value, layout):
    model = create_model("tiny", head=HeadConfig(3)).eval()
    key = "encoder.layers.1.attention.k_proj.weight"
    with torch.no_grad():
        model.state_dict()[key][0, 1] = value
    if layout == "ours":
        path = model.save_pretrained(tmp_path / "m")  # checksum matches: only the finite check can catch it
    elif layout == "hf":  # a transformers-style directory: no checksum at all
        path = tmp_path / "hf"
        path.mkdir()
        cfg = {k: v for k, v in hf_config_dict(model.config).items() if k not in ("vocab_sizes", "ensemble_length")}
        (path / "config.json").write_text(json.dumps({**cfg, "model_type": "hubert"}))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    else:
        path = tmp_path / "m.pt"
        torch.save(model.state_dict(), path)
    kind = "NaN" if value != value else "infinite"
    with pytest.raises(CheckpointError, match=rf"tensor {key} has 1 {kind} value"):
        load_model(path)
    _cli_refuses(path, capsys, key)


def test_wrong_shape_for_the_config_is_refused(tmp_path, capsys):
    path = create_model("tiny").save_pretrained(tmp_path / "m")
    _edit_config(path, lambda c: c["model"].update(intermediate_size=96))
    with pytest.raises(
        CheckpointError,
        match=r"tensor encoder\.layers\.0\.feed_forward\.intermediate_dense\.bias "
        r"has shape \(128,\), the config implies \(96,\)",
    ):
        load_model(path)
    _cli_refuses(path, capsys, "intermediate_dense")


@pytest.mark.parametrize(
    "head_type,key",
    [("linear", "classifier.weight"), ("mlp", "classifier.2.weight"), ("cosine", "classifier.label_embedding.weight")],
)
def test_label_names_must_match_the_head(tmp_path, capsys, head_type, key):
    model = create_model("tiny", head=HeadConfig(3, type=head_type, hidden_size=16))
    model.info.label_names = ["AF", "LBBB", "RBBB"]
    path = model.save_pretrained(tmp_path / "m")
    assert load_model(path).info.label_names == ["AF", "LBBB", "RBBB"]
    _edit_config(path, lambda c: c["info"].update(label_names=["AF", "LBBB"]))
    message = f"info.label_names has 2 names but the head ({key}) has 3 outputs"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_model(path)
    _cli_refuses(path, capsys, message)


@pytest.mark.parametrize(
    "thresholds,fragment",
    [
        ([0.2, 1.5, 0.3], "info.thresholds[1] = 1.5 is outside [0, 1]"),
        ([-0.1, 0.5, 0.3], "info.thresholds[0] = -0.1 is outside [0, 1]"),
        ([0.2, 0.5, float("nan")], "info.thresholds[2] = nan is outside [0, 1]"),
        ([0.2, 0.5], "info.thresholds has 2 values but the head (classifier.weight) has 3 outputs"),
    ],
)
def test_thresholds_must_be_probabilities_one_per_output(tmp_path, capsys, thresholds, fragment):
    model = create_model("tiny", head=HeadConfig(3))
    model.info.thresholds = [0.0, 0.5, 1.0]  # the closed interval is fine
    path = model.save_pretrained(tmp_path / "m")
    assert load_model(path).info.thresholds == [0.0, 0.5, 1.0]
    _edit_config(path, lambda c: c["info"].update(thresholds=thresholds))
    with pytest.raises(CheckpointError, match=re.escape(fragment)):
        load_model(path)
    _cli_refuses(path, capsys, fragment)


@pytest.mark.parametrize(
    "corrupt,fragment",
    [
        (lambda b: (10**12).to_bytes(8, "little") + b[8:], "header length"),
        (lambda b: b[:8] + b"#" + b[9:], "header is not JSON"),
        (lambda b: b[:-4], "truncated or padded"),
    ],
)
def test_safetensors_header_is_checked(tmp_path, capsys, corrupt, fragment):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("tiny").state_dict().items()}, str(path))
    assert load_file(str(path))  # intact file reads
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(CheckpointError, match=fragment):
        load_model(path)
    _cli_refuses(path, capsys, fragment)


def test_safetensors_header_with_overlapping_ranges_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(4), "b": torch.ones(4)}, str(path))
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    header["b"]["data_offsets"] = header["a"]["data_offsets"]
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + length :])
    with pytest.raises(CheckpointError, match="overlap"):
        safe_pickle.check_safetensors_header(path)
