"""`pixeldrl export`: ONNX and TorchScript graphs with a dynamic batch that give torch's masks; and the inference
speed-ups (early exit, policy-only forward, flash attention) that must not change a single mask."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort  # a test dependency (the export extra): missing, the suite fails, it does not skip
import pytest
import torch
from torch.profiler import profile

from pixelrl_env.dataset import load_part
from rl_agents.algo.inference import GreedySegmenter, segment, segment_with_steps
from rl_agents.algo.model import PixelDRLNet, SelfAttention2d
from rl_agents.cli import main
from rl_agents.experiment.evaluate import predict
from rl_agents.experiment.loaded import load_model
from tests.conftest import train_tiny

SYNTH = ["data.format=synthetic", "data.size=32", "data.synthetic={n_patients: 6, slices_per_patient: 4, size: 32}"]


@pytest.fixture(scope="module")
def pa3c_ckpt(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("pa3c"), SYNTH)


@pytest.fixture(scope="module")
def images(pa3c_ckpt: Path) -> np.ndarray:
    _, cfg = load_model(pa3c_ckpt)
    x = load_part(cfg.data, "train").images
    assert len(x) >= 5
    return x[:5]  # a batch size the export was not traced with


def test_onnx_export_runs_in_onnxruntime_at_any_batch_with_torchs_masks(pa3c_ckpt: Path, images, tmp_path: Path):
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(pa3c_ckpt), "--format", "onnx", "--output", str(out)]) == 0
    meta = json.loads((tmp_path / "model.onnx.json").read_text())
    assert meta["kind"] == "pixeldrl-mg" and meta["checked_against_torch"] is True
    assert meta["inputs"]["images"]["shape"] == ["batch", 3, 32, 32] and meta["t_max"] == 3

    model, cfg = load_model(pa3c_ckpt)
    want_masks, want_unc = segment(model, images, cfg.pa3c.t_max)  # the eager path, early exit included
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.shape[0] for i in sess.get_inputs()] == ["batch"]
    for batch in (images[:1], images):
        masks, unc = sess.run(["masks", "uncertainty"], {"images": batch})
        same = masks.astype(np.uint8) == want_masks[: len(batch)]
        # onnxruntime rounds differently from torch, which can flip a pixel whose two logits are all but tied (seen:
        # 1 of 5120); the export itself refuses anything below 99.9 % agreement
        assert same.mean() >= 0.999, f"{(~same).sum()} of {same.size} pixels differ"
        np.testing.assert_allclose(unc[same], want_unc[: len(batch)][same], atol=1e-5)
    assert 0 < want_masks.mean() < 1  # a mask with both classes, so equality says something


def test_torchscript_export_loads_without_our_code_and_matches(pa3c_ckpt: Path, images, tmp_path: Path):
    assert main(["export", "--checkpoint", str(pa3c_ckpt), "--format", "torchscript"]) == 0
    out = pa3c_ckpt.with_name("best.ts.pt")  # default: beside the checkpoint
    assert out.with_name("best.ts.pt.json").exists()
    with pytest.warns(DeprecationWarning):  # torch.jit is deprecated upstream; libtorch still loads it
        loaded = torch.jit.load(str(out))
    model, cfg = load_model(pa3c_ckpt)
    with torch.inference_mode():
        masks, unc = loaded(torch.from_numpy(images))
    want_masks, want_unc = segment(model, images, cfg.pa3c.t_max)
    np.testing.assert_array_equal(masks.numpy().astype(np.uint8), want_masks)
    np.testing.assert_allclose(unc.numpy(), want_unc, atol=1e-5)


def test_a_unet_checkpoint_exports_with_the_evaluation_threshold(tmp_path: Path):
    ckpt = train_tiny(tmp_path / "unet", [*SYNTH, "model=unet"])
    out = tmp_path / "unet.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--output", str(out)]) == 0
    assert json.loads(out.with_name("unet.onnx.json").read_text())["kind"] == "unet"
    model, cfg = load_model(ckpt)
    x = load_part(cfg.data, "train").images[:3]
    want_masks, want_unc = predict(model, cfg, x, "cpu")
    masks, unc = ort.InferenceSession(str(out)).run(None, {"images": x})
    np.testing.assert_array_equal(masks.astype(np.uint8), want_masks)
    np.testing.assert_allclose(unc, want_unc, atol=1e-5)


def test_export_refuses_an_unknown_format_and_a_missing_checkpoint(tmp_path: Path, capsys):
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", "x.pt", "--format", "tflite"])
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--format", "onnx"]) != 0
    assert "none.pt" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_early_exit_gives_exactly_the_masks_of_all_t_max_steps(pa3c_ckpt: Path, images):
    model, cfg = load_model(pa3c_ckpt)
    t_long = 10  # more steps than trained, so that most images reach their fixed point early
    full_m, full_u, full_steps, *_ = segment_with_steps(model, images, t_long, early_exit=False)
    m, u, steps, *_ = segment_with_steps(model, images, t_long, batch_size=2)  # odd last batch on purpose
    np.testing.assert_array_equal(m, full_m)
    np.testing.assert_allclose(u, full_u, atol=1e-6)
    assert (full_steps == t_long).all() and (steps >= 1).all() and steps.max() <= t_long
    assert steps.min() < t_long  # some image stopped early, so the shortcut was exercised
    # every step's mask (predict --gif's frames): the same with and without the shortcut, ending in the masks
    full_states = segment_with_steps(model, images, t_long, early_exit=False, keep_states=True).states
    states = segment_with_steps(model, images, t_long, batch_size=2, keep_states=True).states
    assert states.shape == (len(images), t_long + 1, *m.shape[1:]) and (states[:, 0] == 1).all()
    np.testing.assert_array_equal(states, full_states)
    np.testing.assert_array_equal(states[:, -1], m)
    # and the fixed graph that the MLflow model and exports use agrees with both
    with torch.inference_mode():
        g_m, g_u = GreedySegmenter(model, t_long, uncertainty=True)(torch.from_numpy(images))
    np.testing.assert_array_equal(g_m.numpy().astype(np.uint8), m)
    np.testing.assert_allclose(g_u.numpy(), u, atol=1e-6)


def test_policy_only_forward_equals_the_full_forward():
    torch.manual_seed(0)
    net = PixelDRLNet(2, 3, "small").eval()
    x = torch.rand(2, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net.policy(x), net(x)[0])


@pytest.mark.parametrize("key,value", [(12, 24), (24, 12), (16, 16)])
def test_self_attention_equals_softmax_qk_v_written_out(key: int, value: int):
    torch.manual_seed(0)
    att = SelfAttention2d(8, key, value)
    with torch.no_grad():
        att.gamma.fill_(0.7)
        x = torch.rand(2, 8, 6, 5)
        q, k, v = (m(x).flatten(2).transpose(1, 2) for m in (att.q, att.k, att.v))  # (B, HW, E)
        w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(key), dim=-1)
        y = (w @ v).transpose(1, 2).reshape(2, value, 6, 5)
        want = x + 0.7 * att.out(y)
        torch.testing.assert_close(att(x), want, atol=1e-5, rtol=1e-5)
    # and gradients still flow through the padded path (training uses it)
    x.requires_grad_(True)
    att(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and att.q.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("key,value", [(12, 24), (24, 12), (16, 16)])
def test_self_attention_runs_on_the_flash_kernel(key: int, value: int):
    """The CPU flash kernel, not SDPA's math path (which builds the HW x HW matrix): a non-contiguous q, k or v, or
    different widths, silently send SDPA down the math path; they did, 6.6x slower at 64x64 features."""

    att = SelfAttention2d(8, key, value).eval()
    with torch.inference_mode(), profile() as prof:
        att(torch.rand(2, 8, 16, 16))
    ops = {e.key for e in prof.key_averages()}
    assert any("flash_attention" in op for op in ops), sorted(ops)
    assert "aten::_softmax" not in ops and "aten::bmm" not in ops, sorted(ops)
