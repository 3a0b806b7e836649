"""The architectures themselves, in eager PyTorch: contracts, masking, invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnexport.builder.eager import TorchRunner, build_model
from rnnexport.errors import UsageError
from rnnexport.feeds import make_feeds
from rnnexport.registry import get_arch, list_architectures
from rnnexport.spec import ArchConfig

from ..helpers import ARCH_NAMES, MASKED, PER_STEP

# Facts taken from the reference articles, computed by hand (not by the code under test). Every
# registered architecture must appear here: the meta-test below fails otherwise.
#   LSTM(10, 20): 4*20*(10+20) + 2*4*20 = 2560 parameters; GRU(10, 20): 3*20*30 + 2*3*20 = 1920.
# Output shapes are for the articles' example input x[32, 20, 10].
ARTICLE_FACTS: dict[str, tuple[int, tuple[int, ...]]] = {
    "parallel-lstm": (3 * 2560 + (60 * 20 + 20), (32, 20, 20)),
    "parallel-lstm-attention": (3 * 2560 + (20 + 1), (32, 20, 20)),
    "parallel-gru": (3 * 1920 + (60 * 20 + 20), (32, 20, 20)),
    "many-to-many": (2560 + (20 * 5 + 5), (32, 20, 5)),
    "many-to-many-masked": (2560 + (20 * 5 + 5), (32, 20, 5)),
    "attention": (2560 + (20 * 20 + 20) + 20 + (20 * 5 + 5), (32, 5)),
}
ATOL = 1e-6


def _model(name: str, seed: int = 0) -> tuple[torch.nn.Module, TorchRunner]:
    spec = get_arch(name)
    model = build_model(spec, ArchConfig(), seed=seed)
    return model, TorchRunner(spec, model, reference=False)


def _feeds(name: str, batch: int, seq: int, seed: int = 1) -> dict[str, np.ndarray]:
    spec = get_arch(name)
    return make_feeds(spec.contract(ArchConfig()), batch=batch, seq=seq, rng=np.random.default_rng(seed))


def test_every_registered_architecture_has_article_facts() -> None:
    missing = sorted(set(ARCH_NAMES) - set(ARTICLE_FACTS))
    assert not missing, f"add {missing} to ARTICLE_FACTS (and golden data: scripts/make_golden.py)"
    assert len(ARCH_NAMES) == 6


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_parameter_count_and_article_shape(arch: str) -> None:
    params, out_shape = ARTICLE_FACTS[arch]
    model, runner = _model(arch)
    assert sum(p.numel() for p in model.parameters()) == params
    y = runner.infer(_feeds(arch, 32, 20))["y"]
    assert y.shape == out_shape
    assert y.dtype == np.float32


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_output_matches_declared_contract(arch: str) -> None:
    spec = get_arch(arch)
    config = ArchConfig(input_size=3, hidden_size=6, output_size=4, branches=2)
    runner = TorchRunner(spec, build_model(spec, config, seed=0), reference=False)
    feeds = make_feeds(spec.contract(config), batch=4, seq=9, rng=np.random.default_rng(0))
    outputs = runner.infer(feeds)
    for out in spec.contract(config).outputs:
        expected = tuple({"batch": 4, "seq": 9}.get(d, d) if isinstance(d, str) else d for d in out.shape)
        assert outputs[out.name].shape == expected


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_batch_first(arch: str) -> None:
    # The article's defect: time-major RNNs fed batch-first tensors mix rows. Batch-first models
    # keep rows apart, so a batch of 2 and a batch of 5 agree on the rows they share.
    _, runner = _model(arch)
    big = _feeds(arch, 5, 6)
    small = {k: v[:2].copy() for k, v in big.items()}
    np.testing.assert_allclose(runner.infer(small)["y"], runner.infer(big)["y"][:2], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_batch_independence(arch: str) -> None:
    _, runner = _model(arch)
    feeds = _feeds(arch, 6, 11)
    batched = runner.infer(feeds)["y"]
    for row in range(6):
        alone = runner.infer({k: v[row : row + 1] for k, v in feeds.items()})["y"]
        np.testing.assert_allclose(alone[0], batched[row], atol=ATOL, rtol=0, err_msg=f"row {row}")


@pytest.mark.parametrize("arch", PER_STEP)
def test_causality(arch: str) -> None:
    _, runner = _model(arch)
    seq = 12
    feeds = _feeds(arch, 3, seq)
    if "lengths" in feeds:
        feeds["lengths"][:] = seq
    base = runner.infer(feeds)["y"]
    rng = np.random.default_rng(7)
    for t in (0, 5, seq - 2):
        changed = {k: v.copy() for k, v in feeds.items()}
        changed["x"][:, t + 1 :] = rng.standard_normal(changed["x"][:, t + 1 :].shape).astype(np.float32) * 10
        after = runner.infer(changed)["y"]
        np.testing.assert_array_equal(after[:, : t + 1], base[:, : t + 1], err_msg=f"step {t}")
        assert not np.allclose(after[:, t + 1 :], base[:, t + 1 :]), "later steps should react"


@pytest.mark.parametrize("arch", MASKED)
@pytest.mark.parametrize(("batch", "seq"), [(1, 1), (2, 1), (7, 15), (4, 120)])
def test_masked_equals_packed_reference(arch: str, batch: int, seq: int) -> None:
    spec = get_arch(arch)
    model = build_model(spec, ArchConfig(), seed=3)
    masked = TorchRunner(spec, model, reference=False)
    packed = TorchRunner(spec, model, reference=True)
    feeds = _feeds(arch, batch, seq, seed=seq)
    lengths = feeds["lengths"]
    assert lengths.max() == seq
    assert batch == 1 or lengths.min() == 1
    got, want = masked.infer(feeds)["y"], packed.infer(feeds)["y"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    if spec.per_step:
        for row, length in enumerate(lengths):
            assert (got[row, length:] == 0).all()
            assert (want[row, length:] == 0).all()


@pytest.mark.parametrize("arch", MASKED)
def test_padding_content_and_extra_padding_change_nothing(arch: str) -> None:
    _, runner = _model(arch)
    feeds = _feeds(arch, 5, 17)
    base = runner.infer(feeds)["y"]
    rng = np.random.default_rng(11)

    noisy = {k: v.copy() for k, v in feeds.items()}
    longer = {"lengths": feeds["lengths"].copy(), "x": np.zeros((5, 17 + 23, 10), np.float32)}
    for row, length in enumerate(feeds["lengths"]):
        noisy["x"][row, length:] = rng.standard_normal(noisy["x"][row, length:].shape) * 1e6
        longer["x"][row, :length] = feeds["x"][row, :length]
        longer["x"][row, length:] = rng.standard_normal(longer["x"][row, length:].shape) * 1e3

    np.testing.assert_allclose(runner.infer(noisy)["y"], base, atol=ATOL, rtol=0)
    padded_more = runner.infer(longer)["y"]
    if get_arch(arch).per_step:
        np.testing.assert_allclose(padded_more[:, :17], base, atol=ATOL, rtol=0)
        assert (padded_more[:, 17:] == 0).all()
    else:
        np.testing.assert_allclose(padded_more, base, atol=ATOL, rtol=0)


def test_attention_padded_equals_unpadded() -> None:
    _, runner = _model("attention")
    feeds = _feeds("attention", 6, 40)
    padded = runner.infer(feeds)["y"]
    for row, length in enumerate(feeds["lengths"]):
        alone = {"x": feeds["x"][row : row + 1, :length], "lengths": np.array([length], np.int64)}
        np.testing.assert_allclose(runner.infer(alone)["y"][0], padded[row], atol=ATOL, rtol=0)


def test_parallel_attention_is_a_per_step_mixture_of_branches() -> None:
    # Each step's output is a convex combination of the branches' outputs at that same step.
    model, runner = _model("parallel-lstm-attention")
    x = _feeds("parallel-lstm-attention", 2, 8)["x"]
    with torch.inference_mode():
        lstms = list(model.get_submodule("lstms").children())
        branches = torch.stack([lstm(torch.from_numpy(x))[0] for lstm in lstms], dim=1).numpy()
    y = runner.infer({"x": x})["y"]
    lo, hi = branches.min(axis=1), branches.max(axis=1)
    assert ((y >= lo - 1e-6) & (y <= hi + 1e-6)).all()


@pytest.mark.parametrize(
    ("field", "value"),
    [("hidden_size", 0), ("input_size", -3), ("branches", 100), ("output_size", 10**7), ("hidden_size", 2.5)],
)
def test_config_rejects_bad_sizes(field: str, value: object) -> None:
    with pytest.raises(UsageError, match=field) as info:
        ArchConfig(**{field: value})  # type: ignore[arg-type]
    assert str(value) in str(info.value)


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(UsageError, match="hidden_sise"):
        ArchConfig.from_mapping({"hidden_sise": 3})


def test_unknown_architecture_lists_valid_names() -> None:
    with pytest.raises(UsageError) as info:
        get_arch("atention")
    message = str(info.value)
    assert all(spec.name in message for spec in list_architectures())
    assert "Did you mean 'attention'" in message
