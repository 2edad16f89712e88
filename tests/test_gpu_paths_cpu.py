"""The GPU code paths, checked without a GPU (review docs/reviews/gpu-2026-12.md, issue 15 §3).

* placement: the model, its inputs and the loss constants on the **meta** device; any tensor built on
  the CPU inside a step meets them and raises "expected all tensors on the same device" as CUDA would;
* host syncs: a TorchDispatchMode counts cross-device copies and ``.item()``-like ops in one micro-step;
* torchrun backend choice, device per rank, precision choice, backend flags, seeds: mocked CUDA;
* regional compile: ``backend="eager"`` counts the graphs Dynamo makes with layerdrop on.
"""

from __future__ import annotations

import contextlib
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hubert_ecg import distributed, runtime
from hubert_ecg.config import HeadConfig
from hubert_ecg.distributed import DistEnv
from hubert_ecg.finetune import FinetuneObjective, FinetuneOptions, prepare_model
from hubert_ecg.model import _patches, create_model
from hubert_ecg.pretraining.objective import PretrainObjective

META = torch.device("meta")


@pytest.fixture(autouse=True)
def _autocast_off_on_meta(monkeypatch):
    """``torch.autocast("meta")`` does not exist: a null context there (CPU/CUDA keep the real one)."""
    real = torch.autocast

    def autocast(device_type, *args, **kwargs):
        return contextlib.nullcontext() if device_type == "meta" else real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)


def _pretrain_objective(model) -> PretrainObjective:
    """The objective without a store: only what ``training_loss`` reads."""
    obj = PretrainObjective.__new__(PretrainObjective)
    obj.model, obj.alpha, obj.seed = model, 0.5, 3
    return obj


def _batch(batch: int, device: torch.device, *, padded: bool, targets: int = 0, labels: int = 0) -> dict:
    samples = 6000
    out: dict = {"input": torch.randn(batch, samples), "full": not padded, "attention_mask": None}
    if padded:
        mask = torch.ones(batch, samples, dtype=torch.bool)
        mask[0, samples // 2 :] = False
        out["attention_mask"] = mask
    if targets:
        out["targets"] = torch.randint(0, targets, (batch, 1, 93))
    if labels:
        out["labels"] = torch.randint(0, 2, (batch, labels)).float()
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Placement on another device (the meta device)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_pretrain_step_runs_with_everything_on_another_device(padded, checkpointing):
    model = create_model("tiny", vocab_sizes=[4], gradient_checkpointing=checkpointing).to(META).train()
    obj = _pretrain_objective(model)
    module = torch.nn.Module()
    from hubert_ecg.pretraining.objective import MaskedPrediction

    module = MaskedPrediction(model)
    batch = _batch(4, META, padded=padded, targets=4)
    loss, stats = obj.training_loss(module, batch, step=5, env=DistEnv(), micro=1, accum=2)
    assert loss.device == META and stats["masked_acc"].device == META
    loss.backward()
    assert model.encoder.layers[0].attention.q_proj.weight.grad.device == META


@pytest.mark.parametrize("task,outputs", [("multi_label", 3), ("binary", 1), ("multi_class", 3), ("regression", 2)])
@pytest.mark.parametrize("padded", [False, True])
def test_finetune_step_runs_with_everything_on_another_device(task, outputs, padded):
    model = create_model("tiny", head=HeadConfig(num_labels=outputs)).to(META).train()
    obj = FinetuneObjective.__new__(FinetuneObjective)
    obj.opts = FinetuneOptions(task=task, class_weights=True)
    obj.pos_weight = torch.full((outputs,), 2.0) if task in ("multi_label", "binary") else None
    obj.class_weight = torch.ones(outputs) if task == "multi_class" else None
    obj.to(META)
    batch = _batch(4, META, padded=padded, labels=max(outputs, 1) if task != "multi_class" else 1)
    loss, _ = obj.training_loss(model, batch, step=0, env=DistEnv())
    assert loss.device == META
    loss.backward()


def test_forward_with_sampled_masks_on_another_device():
    model = create_model("tiny").to(META).train()
    x = torch.randn(2, 6000, device=META)
    mask = torch.ones(2, 6000, dtype=torch.bool, device=META)
    out = model(x, mask, apply_mask=True)
    assert out.mask_time_indices.device == META and out.last_hidden_state.device == META


def test_span_mask_takes_its_device_from_the_scores_it_is_given():
    """The review's bug 1.1: no token mask (a full batch) and no ``device=`` -> the mask was built on the CPU."""
    scores = torch.rand(3, 93, device=META)
    mask = __import__("hubert_ecg.model", fromlist=["sample_span_mask"]).sample_span_mask(
        3, 93, mask_prob=0.33, scores=scores, u=torch.rand((), device=META)
    )
    assert mask.device == META


# ---------------------------------------------------------------------------------------------
# Host syncs and copies in a micro-step
# ---------------------------------------------------------------------------------------------
class SyncCounter(TorchDispatchMode):
    """Counts ops that make the host wait for the device: cross-device copies and scalar reads."""

    SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::is_nonzero"}

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in self.SYNC_OPS:
            self.events.append(name)
        if name in ("aten::_to_copy", "aten::copy_"):
            src = args[1] if name == "aten::copy_" else args[0]
            dst = kwargs.get("device", args[0].device if name == "aten::copy_" else src.device)
            if torch.is_tensor(src) and dst is not None and torch.device(dst) != src.device:
                self.events.append(f"copy {src.device}->{dst} {tuple(src.shape)}")
        return func(*args, **kwargs)


def _finetune_meta(task: str, outputs: int, moved: bool):
    model = create_model("tiny", head=HeadConfig(num_labels=outputs)).to(META).train()
    obj = FinetuneObjective.__new__(FinetuneObjective)
    obj.opts = FinetuneOptions(task=task, class_weights=True)
    obj.pos_weight = torch.full((outputs,), 2.0) if task != "multi_class" else None
    obj.class_weight = torch.ones(outputs) if task == "multi_class" else None
    if moved:
        obj.to(META)
    labels = 1 if task in ("multi_class", "binary") else outputs
    return model, obj, _batch(4, META, padded=False, labels=labels)


@pytest.mark.parametrize("task,outputs", [("multi_label", 3), ("binary", 1), ("multi_class", 3)])
def test_finetune_micro_step_has_no_copy_or_sync_once_weights_are_moved(task, outputs):
    model, obj, batch = _finetune_meta(task, outputs, moved=True)
    with SyncCounter() as counter:
        loss, _ = obj.training_loss(model, batch, step=0, env=DistEnv())
        loss.backward()
    assert counter.events == []
    # The counter does see the per-step copy the review found (weights left on the CPU).
    model, obj, batch = _finetune_meta(task, outputs, moved=False)
    with SyncCounter() as counter:
        obj.training_loss(model, batch, step=0, env=DistEnv())
    assert len([e for e in counter.events if e.startswith("copy cpu->meta")]) == 1


def test_pretrain_micro_step_has_no_copy_or_sync():
    from hubert_ecg.pretraining.objective import MaskedPrediction

    model = create_model("tiny", vocab_sizes=[4]).to(META).train()
    obj = _pretrain_objective(model)
    for padded in (False, True):
        batch = _batch(4, META, padded=padded, targets=4)
        with SyncCounter() as counter:
            loss, _ = obj.training_loss(MaskedPrediction(model), batch, step=2, env=DistEnv())
            loss.backward()
        assert counter.events == [], padded


def test_train_moves_the_objective_constants_once():
    """``train()`` calls ``objective.to(device)``; FinetuneObjective.to moves pos_weight/class weights."""
    obj = FinetuneObjective.__new__(FinetuneObjective)
    obj.pos_weight, obj.class_weight = torch.ones(3), torch.ones(2)
    assert obj.to(META) is obj and obj.pos_weight.device == META and obj.class_weight.device == META
    import inspect

    from hubert_ecg import training

    assert "objective.to(device)" in inspect.getsource(training._setup_run)  # train() -> _setup_run()


# ---------------------------------------------------------------------------------------------
# What trains: parameters without gradients are frozen (DDP would stop at step 2)
# ---------------------------------------------------------------------------------------------
def test_finetuning_freezes_what_it_never_uses_and_every_trainable_parameter_gets_a_gradient():
    model = create_model("tiny", conv_bias=True)
    prepare_model(model, FinetuneOptions(train_conv_stem=True), 2, ["a", "b"])
    assert not model.masked_spec_embed.requires_grad
    assert not model.feature_extractor.conv_layers[0].conv.bias.requires_grad
    model.train()
    model(torch.randn(2, 6000)).logits.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_pretraining_keeps_the_mask_embedding_and_every_trainable_parameter_gets_a_gradient():
    from hubert_ecg.pretraining.objective import MaskedPrediction

    model = create_model("tiny", vocab_sizes=[4], conv_bias=True, layerdrop=0.0).train()
    assert model.masked_spec_embed.requires_grad
    assert not model.feature_extractor.conv_layers[0].conv.bias.requires_grad  # cancels in the GroupNorm
    obj = _pretrain_objective(model)
    loss, _ = obj.training_loss(
        MaskedPrediction(model), _batch(4, torch.device("cpu"), padded=False, targets=4), step=0, env=DistEnv()
    )
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


# ---------------------------------------------------------------------------------------------
# torchrun: backend, device per rank (mocked CUDA)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def fake_cuda(monkeypatch):
    calls: dict = {"set_device": [], "init": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls["set_device"].append(d))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(
        torch.distributed, "init_process_group", lambda backend=None, **kw: calls["init"].append((backend, kw))
    )
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    return calls


@pytest.mark.parametrize("device", ["auto", None, "cuda"])
def test_torchrun_on_gpus_uses_nccl_and_this_ranks_gpu(fake_cuda, device):
    env = distributed.init_distributed(device)
    assert (env.rank, env.world_size, env.local_rank) == (3, 8, 3)
    assert fake_cuda["set_device"] == [3]
    ((backend, kw),) = fake_cuda["init"]
    assert backend == "nccl" and kw["device_id"] == torch.device("cuda", 3) and kw["timeout"] == distributed.TIMEOUT
    assert runtime.resolve_device(device, local_rank=env.local_rank) == torch.device("cuda", 3)


def test_torchrun_on_cpu_uses_gloo_without_touching_cuda(fake_cuda):
    distributed.init_distributed("cpu")
    assert fake_cuda["set_device"] == [] and fake_cuda["init"][0][0] == "gloo"


def test_torchrun_refuses_an_explicit_gpu_index(fake_cuda):
    with pytest.raises(ValueError, match=r"--device cuda:1: under torchrun every process picks its own GPU"):
        distributed.init_distributed("cuda:1")
    with pytest.raises(ValueError, match="under torchrun"):
        runtime.resolve_device("cuda:0")
    assert fake_cuda["init"] == []


def test_features_and_label_commands_give_each_rank_its_own_gpu(fake_cuda, monkeypatch):
    """`features --kind hidden` / `label` under torchrun: the device handed down is cuda:{LOCAL_RANK}."""
    from hubert_ecg.cli import train_cmds

    seen = {}
    monkeypatch.setattr(
        "hubert_ecg.pretraining.targets.label_store",
        lambda *a, device=None, **k: seen.setdefault("label", device) and [],
    )
    monkeypatch.setattr("hubert_ecg.store.ECGStore", lambda path: None)
    args = SimpleNamespace(
        device="auto", store="s", kmeans=[], name="n", checkpoint=None, layer=None, batch_size=2, quiet=True
    )
    train_cmds._cmd_label(args)
    assert seen["label"] == "cuda:3"


def test_single_process_auto_device_and_precision(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device("auto") == torch.device("cuda", 0)
    assert runtime.resolve_device("cuda:1") == torch.device("cuda", 1)  # one process: any GPU
    gpu = torch.device("cuda", 0)
    for capability, expected in [
        ((7, 5), torch.float16),
        ((7, 0), torch.float16),
        ((8, 0), torch.bfloat16),
        ((9, 0), torch.bfloat16),
    ]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=capability: c)
        assert runtime.precision_dtype("auto", gpu) == expected, capability
        assert runtime.precision_dtype("bf16", gpu) == torch.bfloat16  # asked for: given
    assert runtime.precision_dtype("auto", torch.device("cpu")) is None
    assert runtime.precision_dtype("fp16", torch.device("cpu")) == torch.float16
    from hubert_ecg.fast_inference import auto_mode

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    assert auto_mode(gpu) == "eager"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    assert auto_mode(gpu) == "bf16"


def test_backend_flags_benchmark_unless_deterministic_and_no_tf32_in_float32():
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        gpu = torch.device("cuda", 0)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        runtime.configure_backends(gpu, torch.bfloat16, deterministic=False)
        assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32
        runtime.configure_backends(gpu, None, deterministic=True)
        assert not torch.backends.cudnn.benchmark
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with runtime.exact_float32():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = saved


def test_cuda_generators_differ_per_rank_and_cpu_generators_agree(monkeypatch):
    seeded = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda s: seeded.append(s))
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: None)
    draws = []
    for rank in (0, 1, 2):
        runtime.seed_everything(11, rank)
        draws.append(torch.rand(3))
    assert seeded == [11, 12, 13]
    assert all(torch.equal(draws[0], d) for d in draws)  # layerdrop decisions agree across ranks


def test_cuda_rng_is_saved_per_rank_and_restored_for_this_rank():
    import inspect

    from hubert_ecg import training

    assert training._gather_cuda_rng(DistEnv(), torch.device("cpu")) == []
    src = inspect.getsource(training.train)
    assert "cuda_states[env.rank]" in inspect.getsource(training._restore_rng) and "set_rng_state_all" not in src


# ---------------------------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------------------------
def test_codebook_and_cosine_logits_are_float32_under_autocast():
    torch.manual_seed(0)
    model = create_model("tiny", vocab_sizes=[50], head=HeadConfig(num_labels=3, type="cosine")).eval()
    h = torch.randn(2, 93, model.config.hidden_size)
    reference = model.codebook_logits(h)[0]
    pooled = torch.randn(2, model.config.hidden_size)
    ref_cos = model.classifier(pooled)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model.codebook_logits(h)[0]
        got_cos = model.classifier(pooled)
    assert got.dtype == torch.float32 and got_cos.dtype == torch.float32
    # Only the projection runs in bf16; the cosine / temperature does not add bf16 rounding (~0.03).
    projected = model.final_proj[0](h.bfloat16().float())
    torch.testing.assert_close(got_cos, ref_cos, rtol=0, atol=1e-5)
    assert (got - reference).abs().max() < 0.05
    assert projected.dtype == torch.float32


def test_stem_patches_by_view_equal_the_onnx_one_hot_conv(monkeypatch):
    x = torch.randn(3, 6000)
    view = _patches(x, 10, 4)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    conv = _patches(x, 10, 4)
    assert view.shape == conv.shape == (3, 1498, 10)
    assert torch.equal(view, conv)


def test_regression_loss_leaves_blank_targets_out():
    obj = FinetuneObjective.__new__(FinetuneObjective)
    obj.pos_weight = obj.class_weight = None
    logits = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    labels = torch.tensor([[0.0, float("nan")], [1.0, 1.0]])
    for kind, f in [("mse", torch.nn.functional.mse_loss), ("huber", torch.nn.functional.huber_loss)]:
        obj.opts = FinetuneOptions(task="regression", loss=kind)
        loss = obj.loss(logits, labels)
        known = torch.isfinite(labels)
        expected = f(logits[known], labels[known])
        torch.testing.assert_close(loss, expected)


# ---------------------------------------------------------------------------------------------
# torch.compile: regional, no recompiles with layerdrop
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_regional_compile_with_layerdrop_makes_few_graphs_and_no_recompile_storm():
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = create_model(
        "tiny", num_hidden_layers=8, layerdrop=0.1, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0
    ).train()
    runtime.compile_regions(model, backend="eager")
    x = torch.randn(1, 600)  # 8 tokens: the graphs matter here, not the size
    patterns = set()
    generator_state = torch.get_rng_state()
    for _ in range(30):  # the skip patterns the loop below draws (same CPU generator, same order)
        patterns.add(tuple((torch.rand(8) < 0.1).tolist()))
    torch.set_rng_state(generator_state)
    with torch.no_grad():  # the recompiles happen in the forward; train mode keeps layerdrop on
        for _ in range(30):
            model(x)
    assert len(patterns) > 3  # several skip patterns did occur
    assert counters["stats"]["unique_graphs"] <= 4, dict(counters["stats"])
    assert not any("recompile_limit" in k or "cache_size_limit" in k for k in counters["recompiles"]), dict(
        counters["recompiles"]
    )
    dynamo.reset()


# ---------------------------------------------------------------------------------------------
# Validation: capped and sharded; pretrain-loop under torchrun
# ---------------------------------------------------------------------------------------------
def test_validation_rows_are_capped_to_a_seeded_subset():
    obj = PretrainObjective.__new__(PretrainObjective)
    obj.val_rows, obj.max_val_rows, obj.seed = np.arange(1000), 100, 0
    obj.store = SimpleNamespace(
        targets=lambda name: np.zeros((1, 93), np.int16), spec=SimpleNamespace(window_s=5.0), fs=100.0, labels=None
    )
    obj.target_names, obj.model = ["t"], create_model("tiny", vocab_sizes=[4])
    obj.__post_init__()
    assert len(obj.val_rows) == 100 and len(set(obj.val_rows.tolist())) == 100
    assert np.all(np.diff(obj.val_rows) > 0)
    again = PretrainObjective.__new__(PretrainObjective)
    again.__dict__.update(obj.__dict__, val_rows=np.arange(1000))
    again.__post_init__()
    assert np.array_equal(again.val_rows, obj.val_rows)  # seeded: the same subset every time


def test_pretrain_loop_refuses_torchrun(monkeypatch, tmp_path):
    from hubert_ecg.pretraining.loop import run_pretrain_loop

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"pretrain-loop runs in one process \(WORLD_SIZE > 1"):
        run_pretrain_loop(tmp_path / "missing.toml")


def test_onnx_engine_reports_its_providers():
    pytest.importorskip("onnxruntime")
    from hubert_ecg.fast_inference import optimise_for_inference

    engine = optimise_for_inference(create_model("tiny"), "cpu", "onnx")
    assert engine.providers == ["CPUExecutionProvider"]
    assert optimise_for_inference(create_model("tiny"), "cpu", "eager").providers == []


# ---------------------------------------------------------------------------------------------
# The prepared GPU check (benchmarks/gpu_check.py) must not rot between GPU loans
# ---------------------------------------------------------------------------------------------
def _load_bench(name: str):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dry_run", [True, False])
def test_gpu_check_plan_parses_with_the_real_parsers(tmp_path, dry_run):
    """Every command the GPU check will run is accepted by the parser it goes to, and the summary renders."""
    gpu_check, throughput = _load_bench("gpu_check"), _load_bench("throughput")
    sections = {s.name: s for s in gpu_check.plan(tmp_path, dry_run)}
    assert list(sections) == ["cuda-tests", "throughput", "pretrain"]
    assert sum(s.timeout_s for s in sections.values()) <= (420 if dry_run else 8 * 60 - 30)  # < 8 min on a GPU
    tests = sections["cuda-tests"].command
    assert tests[tests.index("-m", 2) + 1] == "cuda" and os.path.exists(tests[tests.index("-m", 2) + 2])
    bench = throughput.parse_args(sections["throughput"].command[2:])
    assert bench.json == tmp_path / "throughput.json" and bench.no_write
    assert bench.sizes == (["tiny"] if dry_run else ["small", "base", "large"])
    if not dry_run:
        assert bench.memory_batch == 64 and "large" in bench.sizes
    pre = gpu_check.parse_args(sections["pretrain"].command[2:])
    assert pre.pretrain_only and pre.out == tmp_path and (pre.seconds == 60 or dry_run)
    summary = {
        "date": "d",
        "device": "H100",
        "dry_run": dry_run,
        "torch": "t",
        "python": "p",
        "total_seconds": 1.0,
        "sections": [{"name": "throughput", "returncode": 0, "seconds": 1.0}],
        "cuda_tests": [{"name": "test_x", "outcome": "passed", "message": ""}],
        "throughput": {
            "device": "H100",
            "rows": [{"size": "small", "workload": "inference", "comparison": "as shipped", "ours_ecg_s": 1.0}],
        },
        "pretrain": {
            "size": "small",
            "batch": 256,
            "workers": 8,
            "seconds": 60,
            "records": 1024,
            "ecg_per_s": 5000.0,
            "data_wait_fraction": 0.01,
            "data_wait_ok": True,
        },
    }
    text = gpu_check.markdown(summary)
    assert "| small | inference | as shipped |" in text and "data-loader wait 1.0% of step time (OK)" in text


@pytest.mark.slow
def test_gpu_check_dry_run_end_to_end(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["returncode"] for s in summary["sections"]] == [0, 0, 0]
    assert {t["outcome"] for t in summary["cuda_tests"]} == {"skipped"}  # no GPU here
    assert {r["workload"] for r in summary["throughput"]["rows"]} == {"inference", "finetune", "pretrain"}
    assert summary["pretrain"]["ecg_per_s"] > 0 and 0 <= summary["pretrain"]["data_wait_fraction"] <= 1
    assert (tmp_path / "gpu_check.md").read_text().startswith("## GPU check")
