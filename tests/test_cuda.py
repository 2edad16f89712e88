"""CUDA-only checks (review docs/reviews/gpu-2026-12.md §8.2); skipped without a GPU.

Run by ``make gpu-check`` (``pytest -m cuda tests/test_cuda.py``). NOT YET RUN ON A GPU: written and
collected on CPU-only machines, where every test here is skipped.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEVICE = torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def _no_tf32():
    """Float32 means float32 in these tests (cuDNN convs default to TF32)."""
    from hubert_ecg.runtime import exact_float32

    with exact_float32():
        yield


# ---------------------------------------------------------------------------------------------
# Stores
# ---------------------------------------------------------------------------------------------
def _store(make_store, root, seconds: float, labels: bool):
    from hubert_ecg.store import ECGStore
    from hubert_ecg.synthetic import SYNTHETIC_LABELS

    path = make_store(24, seed=1, fs=100.0, seconds=seconds, labels=SYNTHETIC_LABELS[:3] if labels else None, root=root)
    store = ECGStore(path)
    targets = np.random.default_rng(0).integers(0, 8, (len(store), 93)).astype(np.int16)
    (root / "store" / "targets").mkdir()
    np.save(root / "store" / "targets" / "t.npy", targets)
    return ECGStore(root / "store")


@pytest.fixture(scope="module", params=["full", "padded"])
def store(request, make_store, tmp_path_factory):
    # 10 s records give full 5 s windows; 3 s records are padded (the masked path).
    seconds = 10.0 if request.param == "full" else 3.0
    return _store(make_store, tmp_path_factory.mktemp(request.param), seconds, labels=True)


def _cfg(out, precision: str, steps: int = 3, **kw):
    from hubert_ecg.training import TrainConfig

    return TrainConfig(
        out_dir=str(out),
        max_steps=steps,
        batch_size=8,
        lr=1e-3,
        val_every=steps,
        log_every=1,
        num_workers=2,
        progress=False,
        precision=precision,
        logger="none",
        device="cuda",
        clip_grad_norm=1.0,
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# 1. Training steps on the GPU: pre-training and fine-tuning, every precision, checkpoint round trip
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_pretrain_and_finetune_train_on_cuda(store, tmp_path, precision):
    from hubert_ecg.checkpoint import load_model
    from hubert_ecg.finetune import FinetuneOptions, run_finetune
    from hubert_ecg.model import create_model
    from hubert_ecg.pretraining.objective import PretrainObjective
    from hubert_ecg.training import read_history, train

    torch.manual_seed(0)
    model = create_model("tiny", vocab_sizes=[8])
    rows = store.rows()
    result = train(
        model,
        PretrainObjective(model, store, ["t"], rows[:-4], rows[-4:], global_batch=8),
        _cfg(tmp_path / "pre", precision),
    )
    assert result.state.step == 3 and np.isfinite(result.state.best)
    assert all(np.isfinite(v) for _, v in read_history(tmp_path / "pre")["train/loss"])
    state = torch.load(tmp_path / "pre" / "last" / "trainer_state.pt", weights_only=True)
    assert (state["scaler"] is not None) == (precision == "fp16")
    assert len(state["rng"]["cuda_per_rank"]) == 1  # this rank's CUDA generator is saved
    reloaded = load_model(tmp_path / "pre" / "last")
    for k, v in model.state_dict().items():
        assert torch.equal(v.cpu(), reloaded.state_dict()[k]), k

    ft = run_finetune(
        str(store.path), _cfg(tmp_path / "ft", precision), FinetuneOptions(monitor="loss"), random_init_size="tiny"
    )
    assert ft.state.step == 3 and np.isfinite(ft.state.best)


# ---------------------------------------------------------------------------------------------
# 2. No host sync inside a training step
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective_kind", ["pretrain", "finetune"])
def test_training_steps_do_not_sync_with_the_host(store, objective_kind):
    from hubert_ecg.distributed import DistEnv
    from hubert_ecg.finetune import FinetuneObjective, FinetuneOptions, prepare_model
    from hubert_ecg.loader import StoreWindows
    from hubert_ecg.model import create_model
    from hubert_ecg.pretraining.objective import MaskedPrediction, PretrainObjective

    torch.manual_seed(0)
    rows = store.rows()
    if objective_kind == "pretrain":
        model = create_model("tiny", vocab_sizes=[8]).to(DEVICE)
        obj = PretrainObjective(model, store, ["t"], rows[:-4], rows[-4:], global_batch=8)
        module = MaskedPrediction(model)
        data = StoreWindows(store, targets=["t"])
    else:
        model = create_model("tiny")
        prepare_model(model, FinetuneOptions(), 3, ["a", "b", "c"])
        model.to(DEVICE)
        obj = FinetuneObjective(model, store, FinetuneOptions(), rows[:-4], rows[-4:]).to(DEVICE)
        module = model
        data = StoreWindows(store, labels=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], fused=True)
    batches = [
        {
            k: v.to(DEVICE, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in data[(i, rows[i * 4 : (i + 1) * 4])].items()
        }
        for i in range(4)
    ]
    torch.cuda.synchronize()
    for i, batch in enumerate(batches):
        if i == 1:
            torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = obj.training_loss(module, batch, step=i, env=DistEnv())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        finally:
            torch.cuda.set_sync_debug_mode(0)


# ---------------------------------------------------------------------------------------------
# 3-5. Numerics: parity with transformers, bf16 tolerance, SDPA backends
# ---------------------------------------------------------------------------------------------
def _pair(size: str):
    from hf_reference import build_hf_model
    from hubert_ecg import checkpoint
    from hubert_ecg.config import create_config

    config = create_config(size, vocab_sizes=())
    hf = build_hf_model(config)
    ours = checkpoint.build_from_state(config, checkpoint.normalise_state_dict(hf.state_dict()), "hf")
    return hf.to(DEVICE).eval(), ours.to(DEVICE).eval()


@pytest.mark.parametrize(
    "size", ["small", pytest.param("base", marks=pytest.mark.slow), pytest.param("large", marks=pytest.mark.slow)]
)
def test_parity_with_transformers_on_cuda_in_float32(size):
    hf, ours = _pair(size)
    torch.manual_seed(1)
    x = torch.randn(3, 6000, device=DEVICE)
    mask = torch.arange(6000, device=DEVICE)[None] < torch.tensor([6000, 4000, 3000], device=DEVICE)[:, None]
    for attention_mask in (None, mask):
        with torch.no_grad():
            ref = hf(x, attention_mask=None if attention_mask is None else attention_mask.long()).last_hidden_state
            got = ours(x, attention_mask)
        valid = torch.ones(3, 93, dtype=torch.bool, device=DEVICE) if attention_mask is None else got.token_mask
        assert (got.last_hidden_state - ref)[valid].abs().max().item() <= 1e-4


@pytest.mark.parametrize("size", ["small", "large"])
def test_bf16_autocast_stays_within_the_stated_tolerance(size):
    from hubert_ecg.fast_inference import TOLERANCES
    from hubert_ecg.model import create_model

    torch.manual_seed(0)
    model = create_model(size).to(DEVICE).eval()
    x = torch.randn(4, 6000, device=DEVICE)
    with torch.no_grad():
        ref = model(x).last_hidden_state
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = model(x).last_hidden_state.float()
    assert (got - ref).abs().max().item() <= TOLERANCES["bf16"][0]


def test_stem_patches_by_view_equal_the_one_hot_conv_on_cuda():
    from hubert_ecg.model import _patches

    x = torch.randn(4, 6000, device=DEVICE)
    one_hot = torch.eye(10, device=DEVICE).unsqueeze(1)
    conv = F.conv1d(x.unsqueeze(1), one_hot, stride=4).transpose(1, 2)
    assert torch.equal(_patches(x, 10, 4), conv)  # TF32 off (fixture): both exact


@pytest.mark.parametrize("heads,dim", [(8, 64), (12, 80)])
def test_sdpa_flash_and_efficient_kernels_match_math(heads, dim):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    q, k, v = (torch.randn(4, heads, 93, dim, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
    key_mask = torch.arange(93, device=DEVICE)[None] < torch.tensor([93, 60, 47, 93], device=DEVICE)[:, None]
    attn_mask = key_mask[:, None, None, :]
    with sdpa_kernel(SDPBackend.MATH):
        ref_full = F.scaled_dot_product_attention(q, k, v)
        ref_masked = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        flash = F.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        efficient = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    torch.testing.assert_close(flash, ref_full, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(efficient, ref_masked, atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------------------------------------
# 6. Gradient checkpointing with dropout on restores the RNG
# ---------------------------------------------------------------------------------------------
def test_gradient_checkpointing_with_dropout_gives_the_same_gradients():
    from hubert_ecg.model import create_model

    torch.manual_seed(0)
    plain = create_model("tiny", layerdrop=0.0).to(DEVICE).train()
    ckpt = copy.deepcopy(plain)
    ckpt.update_config(gradient_checkpointing=True)
    x = torch.randn(2, 6000, device=DEVICE)
    grads = []
    for model in (plain, ckpt):
        torch.cuda.manual_seed(123)
        model(x).last_hidden_state.square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Device masks, fused AdamW, pinned-memory loader, DDP over NCCL in one process, checkpoints
# ---------------------------------------------------------------------------------------------
def test_span_masks_are_drawn_on_the_gpu():
    from hubert_ecg.model import sample_span_mask

    generator = torch.Generator(device=DEVICE).manual_seed(0)
    mask = sample_span_mask(
        64,
        93,
        mask_prob=0.33,
        generator=generator,
        scores=torch.rand(64, 93, device=DEVICE, generator=generator),
        u=torch.rand((), device=DEVICE, generator=generator),
    )
    assert mask.device.type == "cuda" and set(mask.sum(-1).tolist()) <= {30, 31}


def test_pinned_loader_delivers_batches_to_the_gpu(store):
    from hubert_ecg.loader import BatchSampler, StoreWindows, make_loader

    sampler = BatchSampler(store.rows(), 8, world_size=1)
    loader = make_loader(StoreWindows(store, targets=["t"]), sampler, num_workers=2, pin_memory=True)
    batch = next(iter(loader))
    assert batch["input"].is_pinned()
    assert batch["input"].to(DEVICE, non_blocking=True).device.type == "cuda"


def test_ddp_over_nccl_in_one_process(tmp_path, monkeypatch):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from hubert_ecg.model import create_model

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29731")
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=DEVICE)
    try:
        assert dist.get_backend() == "nccl"
        model = create_model("tiny", layerdrop=0.0).to(DEVICE)
        ddp = DDP(model, device_ids=[0])
        ddp(torch.randn(2, 6000, device=DEVICE)).last_hidden_state.sum().backward()
    finally:
        dist.destroy_process_group()


def test_checkpoint_save_and_load_from_gpu_tensors(tmp_path):
    from hubert_ecg.checkpoint import load_model, save_pretrained
    from hubert_ecg.model import create_model

    model = create_model("tiny").to(DEVICE)
    save_pretrained(model, tmp_path / "m")
    back = load_model(tmp_path / "m", device="cuda")
    assert next(back.parameters()).device.type == "cuda"
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


# ---------------------------------------------------------------------------------------------
# 7. Fast inference engines on CUDA
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["eager", "bf16", pytest.param("compile", marks=pytest.mark.slow), "onnx"])
def test_fast_inference_on_cuda(mode):
    from hubert_ecg.fast_inference import TOLERANCES, optimise_for_inference
    from hubert_ecg.model import create_model

    if mode == "onnx":
        pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_model("small").eval()
    x = torch.randn(4, 6000)
    with torch.no_grad():
        ref = copy.deepcopy(model).to(DEVICE)(x.to(DEVICE)).last_hidden_state
    engine = optimise_for_inference(model, "cuda", mode)
    out = engine(x).last_hidden_state
    assert out.device.type == "cuda"
    assert (out - ref).abs().max().item() <= max(TOLERANCES[mode][0], 1e-4)
    if mode == "onnx":
        print("onnx providers:", engine.providers)  # CPU fallback warns; the check records which ran


def test_int8_is_refused_on_cuda():
    from hubert_ecg.fast_inference import FastInferenceError, optimise_for_inference
    from hubert_ecg.model import create_model

    with pytest.raises(FastInferenceError, match="CPU only"):
        optimise_for_inference(create_model("tiny"), "cuda", "int8")


# ---------------------------------------------------------------------------------------------
# 8. Peak memory: large at batch 64, bf16 training step
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("checkpointing,limit_gib", [(False, 10.0), (True, 6.0)])
def test_large_batch_64_training_step_memory(checkpointing, limit_gib):
    from hubert_ecg.model import create_model

    torch.cuda.empty_cache()
    model = create_model("large", vocab_sizes=[100], gradient_checkpointing=checkpointing).to(DEVICE).train()
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    x = torch.randn(64, 6000, device=DEVICE)
    y = torch.randint(0, 100, (64, 93), device=DEVICE)
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x, apply_mask=True)
            logits = model.codebook_logits(out.last_hidden_state)[0]
        F.cross_entropy(logits.float().transpose(1, 2), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"large batch 64 checkpointing={checkpointing}: peak {peak:.2f} GiB")
    assert peak <= limit_gib


# ---------------------------------------------------------------------------------------------
# 9. Regional compile: no recompiles over 10 steps (layerdrop 0 and > 0)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("layerdrop", [0.0, 0.1])
def test_compiled_training_steps_do_not_recompile(layerdrop):
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    from hubert_ecg.model import create_model
    from hubert_ecg.runtime import compile_regions

    dynamo.reset()
    counters.clear()
    model = create_model("small", layerdrop=layerdrop).to(DEVICE).train()
    compile_regions(model)
    x = torch.randn(16, 6000, device=DEVICE)
    for _ in range(10):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x).last_hidden_state.float().square().mean()
        loss.backward()
    assert counters["stats"]["unique_graphs"] <= 4, dict(counters["stats"])
    dynamo.reset()


# ---------------------------------------------------------------------------------------------
# 10. k-means assignment on the GPU equals the NumPy path
# ---------------------------------------------------------------------------------------------
def test_kmeans_assign_on_cuda_equals_numpy():
    from hubert_ecg.pretraining.kmeans import fit_kmeans

    rng = np.random.default_rng(0)
    features = rng.normal(size=(2000, 16)).astype(np.float32)
    model = fit_kmeans(features, 8, seed=0)
    np.testing.assert_array_equal(model.assign(features, device="cuda"), model.assign(features))


# ---------------------------------------------------------------------------------------------
# 11. Two GPUs: NCCL pre-training equals one process (only with >= 2 GPUs)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_nccl_pretraining_equals_one_process(make_store, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    store = _store(make_store, tmp_path, 10.0, labels=False)
    (store.path / "targets" / "fake.npy").write_bytes((store.path / "targets" / "t.npy").read_bytes())
    script = Path(__file__).with_name("train_script.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(store.path), str(tmp_path / "one"), "6"], check=True, env=env)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            str(script),
            str(store.path),
            str(tmp_path / "two"),
            "6",
        ],
        check=True,
        env=env,
    )

    def losses(run):
        return [
            json.loads(line)["train/loss"]
            for line in (run / "history.jsonl").read_text().splitlines()
            if "train/loss" in line
        ]

    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-3)
