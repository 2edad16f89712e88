"""The encoder against transformers.HubertModel holding the same weights, plus geometry and heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_reference import build_hf_model
from hubert_ecg import checkpoint
from hubert_ecg.config import HeadConfig, create_config
from hubert_ecg.model import HubertECG, create_model, sample_span_mask, token_mask_from_sample_mask


def _ours_from_hf(hf_model, config):
    state = checkpoint.normalise_state_dict(hf_model.state_dict())
    return checkpoint.build_from_state(config, state, "hf")


def _parity(size: str, batch: int = 2) -> None:
    config = create_config(size, vocab_sizes=())
    hf = build_hf_model(config)
    ours = _ours_from_hf(hf, config)
    torch.manual_seed(1)
    x = torch.randn(batch, 6000)
    lengths = torch.tensor([6000] + [4000] * (batch - 1))
    mask = torch.arange(6000)[None] < lengths[:, None]
    for attention_mask in (None, mask):
        with torch.no_grad():
            ref = hf(
                x, attention_mask=None if attention_mask is None else attention_mask.long(), output_hidden_states=True
            )
            got = ours(x, attention_mask=attention_mask, output_hidden_states=True)
        assert got.last_hidden_state.shape == (batch, 93, config.hidden_size)
        assert len(got.hidden_states) == len(ref.hidden_states) == config.num_hidden_layers + 1
        if attention_mask is None:
            valid = torch.ones(batch, 93, dtype=torch.bool)
        else:
            valid = got.token_mask
        for a, b in zip(got.hidden_states, ref.hidden_states):
            assert (a - b)[valid].abs().max().item() <= 1e-4
        assert (got.last_hidden_state - ref.last_hidden_state)[valid].abs().max().item() <= 1e-4


def test_parity_small_with_and_without_padding_mask():
    _parity("small")


@pytest.mark.slow
@pytest.mark.parametrize("size", ["base", "large"])
def test_parity_base_large(size):
    _parity(size)


def test_token_mask_equals_hf_length_formula():
    config = create_config("small")
    for valid in (6000, 5999, 4321, 200, 82, 146):
        mask = (torch.arange(6000) < valid)[None]
        tokens = token_mask_from_sample_mask(mask, config.conv_kernel, config.conv_stride)
        assert tokens.shape == (1, 93)
        assert int(tokens.sum()) == config.num_tokens(valid)
        assert tokens[0, : config.num_tokens(valid)].all()


def test_token_counts_and_receptive_field():
    config = create_config("small")
    assert config.num_tokens(6000) == 93
    assert config.num_tokens(12000) == 187
    assert config.num_tokens(3000) == 46
    assert (config.total_stride, config.receptive_field) == (64, 82)
    assert create_config("small", input_rate_hz=500).num_tokens(30000) == 93
    assert create_config("small", input_rate_hz=50).num_tokens(3000) == 93


def test_span_mask_counts_and_padding():
    torch.manual_seed(0)
    counts = set()
    for _ in range(50):
        m = sample_span_mask(8, 93, mask_prob=0.33, mask_length=1, min_masks=2)
        counts.update(m.sum(-1).tolist())
    assert counts <= {30, 31} and counts
    token_mask = torch.arange(93)[None].expand(4, 93) < torch.tensor([93, 60, 10, 3])[:, None]
    m = sample_span_mask(4, 93, mask_prob=0.33, mask_length=3, min_masks=2, token_mask=token_mask)
    assert not (m & ~token_mask).any()
    assert (m.sum(-1) >= 2).all()


def test_masking_only_when_asked():
    model = create_model("tiny").train()
    x = torch.randn(2, 6000)
    out = model(x)
    assert out.mask_time_indices is None
    out = model(x, apply_mask=True)
    assert out.mask_time_indices is not None and out.mask_time_indices.sum(-1).tolist()[0] in (30, 31)
    assert model.training


def test_codebook_logits_are_cosine_over_temperature():
    model = create_model("tiny", vocab_sizes=[7, 5]).eval()
    h = torch.randn(2, 93, model.config.hidden_size)
    logits = model.codebook_logits(h)
    assert [tuple(t.shape) for t in logits] == [(2, 93, 7), (2, 93, 5)]
    for i, lg in enumerate(logits):
        z = model.final_proj[i](h)
        expected = F.cosine_similarity(z[:, :, None, :], model.label_embedding[i].weight[None, None], dim=-1) / 0.1
        torch.testing.assert_close(lg, expected, atol=1e-5, rtol=1e-5)
        assert lg.abs().max() <= 10.0 + 1e-5


@pytest.mark.parametrize(
    "head", [HeadConfig(3), HeadConfig(3, type="mlp", hidden_size=16, activation="relu"), HeadConfig(3, type="cosine")]
)
def test_classifier_heads_pool_valid_tokens_only(head):
    model = create_model("tiny", head=head).eval()
    x = torch.randn(1, 6000)
    mask = torch.zeros(1, 6000, dtype=torch.bool)
    mask[:, :3000] = True
    with torch.no_grad():
        out = model(x, attention_mask=mask)
        pooled = out.last_hidden_state[out.token_mask].mean(0, keepdim=True)
    assert out.logits.shape == (1, 3)
    torch.testing.assert_close(out.pooled, pooled)


def test_layerdrop_and_dropouts_are_configurable():
    model = create_model("tiny", layerdrop=0.0)
    model.set_dropouts(hidden=0.0, attention=0.0, activation=0.0, layerdrop=0.0)
    model.train()
    x = torch.randn(2, 6000)
    torch.testing.assert_close(model(x).last_hidden_state, model(x).last_hidden_state)
    model.set_dropouts(layerdrop=1.0)
    # Every layer skipped: the output is the encoder input.
    out = model(x, output_hidden_states=True)
    torch.testing.assert_close(out.last_hidden_state, out.hidden_states[0])


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    a = create_model("tiny", layerdrop=0.0, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0).train()
    b = HubertECG(a.config.replace(gradient_checkpointing=True)).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 6000)
    for m in (a, b):
        m(x).last_hidden_state.square().mean().backward()
    for p, q in zip(a.parameters(), b.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)


def test_parameter_counts_match_published_sizes():
    # Reference doc §1.2 (verified counts of the published architecture).
    assert create_model("small", vocab_sizes=[100]).num_parameters(backbone_only=True) == 30_209_664
    assert create_model("small", vocab_sizes=[100]).num_parameters() == 30_366_592


def test_model_declares_its_no_decay_parameters_and_depths():
    from hubert_ecg.config import HeadConfig

    model = create_model("tiny", vocab_sizes=[5], head=HeadConfig(num_labels=3, type="cosine"), conv_bias=True)
    names = dict(model.named_parameters())
    exempt = model.no_weight_decay()
    for name in (
        "masked_spec_embed",
        "classifier.log_scale",
        "encoder.layers.1.layer_norm.weight",
        "encoder.layers.0.final_layer_norm.bias",
        "encoder.layer_norm.weight",
        "feature_projection.layer_norm.weight",
        "feature_extractor.conv_layers.0.layer_norm.weight",
        "encoder.layers.0.attention.q_proj.bias",
        "encoder.pos_conv_embed.conv.bias",
        "feature_extractor.conv_layers.1.conv.bias",
    ):
        assert name in exempt, name
    for name in (
        "encoder.layers.0.attention.q_proj.weight",
        "feature_projection.projection.weight",
        "encoder.pos_conv_embed.conv.weight_v",
        "label_embedding.0.weight",
        "classifier.label_embedding.weight",
        "feature_extractor.conv_layers.0.conv.weight",
        "final_proj.0.weight",
    ):
        assert name in names and name not in exempt, name
    assert exempt <= set(names)
    n = model.config.num_hidden_layers
    assert model.num_layer_ids() == n + 3
    expected = {
        "feature_extractor.conv_layers.0.conv.weight": 0,
        "feature_extractor.conv_layers.2.conv.weight": 0,
        "feature_projection.projection.weight": 1,
        "encoder.pos_conv_embed.conv.weight_g": 1,
        "encoder.layer_norm.weight": 1,
        "masked_spec_embed": 1,
        "encoder.layers.0.attention.q_proj.weight": 2,
        "encoder.layers.1.feed_forward.output_dense.bias": 3,
        "classifier.label_embedding.weight": n + 2,
        "final_proj.0.weight": n + 2,
        "label_embedding.0.weight": n + 2,
    }
    assert {k: model.layer_id(k) for k in expected} == expected
    assert all(0 <= model.layer_id(k) <= n + 2 for k in names)


def test_first_conv_bias_under_group_norm_is_frozen_because_it_cancels():
    model = create_model("tiny", conv_bias=True).eval()
    bias = model.feature_extractor.conv_layers[0].conv.bias
    assert not bias.requires_grad
    x = torch.randn(2, 6000)
    before = model(x).last_hidden_state
    with torch.no_grad():
        bias.add_(3.0)
    torch.testing.assert_close(model(x).last_hidden_state, before)  # no effect on the output at all


@pytest.mark.parametrize(
    "valid,p,expected",
    [
        (93, 0.33, {30: 0.31, 31: 0.69}),
        (47, 0.33, {15: 0.49, 16: 0.51}),
        (10, 0.33, {3: 0.7, 4: 0.3}),
        (3, 0.33, {2: 1.0}),
    ],
)
def test_span_counts_follow_the_wav2vec2_rule_in_its_proportions(valid, p, expected):
    """n spans = max(min_masks, floor(p * valid / length + u)), u ~ U[0, 1) once per call: for 93 tokens at
    p 0.33 both 30 and 31 occur, 31 with probability 0.69 (the fractional part of 30.69)."""
    generator = torch.Generator().manual_seed(0)
    token_mask = torch.arange(93)[None] < valid
    draws = 4000
    counts = torch.stack(
        [
            sample_span_mask(
                1, 93, mask_prob=p, mask_length=1, min_masks=2, token_mask=token_mask, generator=generator
            ).sum()
            for _ in range(draws)
        ]
    )
    seen = {int(k): int((counts == k).sum()) for k in counts.unique()}
    assert set(seen) == set(expected)
    for k, prob in expected.items():
        assert abs(seen[k] / draws - prob) < 4 * (prob * (1 - prob) / draws) ** 0.5 + 1e-9, (k, seen)


@pytest.mark.parametrize("length,u", [(3, 0.2), (3, 0.9), (10, 0.5), (5, 0.0)])
def test_longer_spans_start_at_the_top_scored_eligible_positions(length, u):
    """For span length L: floor(p * valid / L + u) starts (at least min_masks, at most valid // L), the
    best-scored positions where a whole span fits in the valid part, each covering L tokens."""
    torch.manual_seed(length)
    valid = torch.tensor([93, 70, 12])
    token_mask = torch.arange(93)[None] < valid[:, None]
    scores = torch.rand(3, 93)
    mask = sample_span_mask(
        3, 93, mask_prob=0.65, mask_length=length, min_masks=2, token_mask=token_mask, scores=scores, u=torch.tensor(u)
    )
    for b in range(3):
        n = int(valid[b])
        spans = min(max(2, int(0.65 * n / length + u)), n // length)
        eligible = [t for t in range(93) if t <= n - length]  # wav2vec2: the whole span inside the valid part
        starts = sorted(eligible, key=lambda t: -float(scores[b, t]))[:spans]
        expected = torch.zeros(93, dtype=torch.bool)
        for s in starts:
            expected[s : s + length] = True
        assert torch.equal(mask[b], expected), b
        assert not (mask[b] & ~token_mask[b]).any()
