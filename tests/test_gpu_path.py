"""The GPU path checked on the CPU (issue 14): what a reading of the CUDA code found, each shown
here where the CPU can show it. `python -m bench.gpu_check` runs the checks that need a GPU."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from core.build import resolve_amp, use_device
from core.data import WebVisionDataset, make_loader, val_transform
from core.evaluate import evaluate
from core.events import RunError, StepStats
from core.optim import make_sgd
from core.resume import own_cuda_rng
from core.webvision import WebVisionIndex
from helpers import HostReads, Recorder, TensorDevices, config, faulty, make_trainer
from helpers import one_torch_thread, root  # noqa: F401 - fixtures


# ----- item 1: fp16 + fused SGD, a skipped first step ------------------------------------------

def test_a_skipped_first_fp16_step_leaves_zero_momentum_and_the_next_step_is_exact():
    """The fused kernel (the one CUDA uses; the CPU has it too) with a GradScaler that finds inf on
    the first step: the momentum buffers stay zero, and the second step equals one clean step."""
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    reference = nn.Linear(8, 4)
    reference.load_state_dict(model.state_dict())
    opt = make_sgd(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, device=torch.device("cpu"))
    for group in opt.param_groups:
        group["fused"] = True  # what make_sgd picks on CUDA
    assert all(torch.count_nonzero(opt.state[p]["momentum_buffer"]) == 0 for p in model.parameters())

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(5, 8)
    overflow = model(torch.full((5, 8), float("inf"))).sum()  # inf gradients: GradScaler skips
    scaler.scale(overflow).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 2.0**16
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
        buf = opt.state[p]["momentum_buffer"]
        assert torch.isfinite(buf).all() and torch.count_nonzero(buf) == 0

    opt.zero_grad()
    scaler.scale(model(x).square().mean()).backward()
    scaler.step(opt)
    scaler.update()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    reference(x).square().mean().backward()
    ref_opt.step()
    for p, r in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, r)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], ref_opt.state[r]["momentum_buffer"])

def test_the_trainer_builds_its_optimizer_with_zero_momentum_buffers(root, tmp_path):
    trainer = make_trainer(config(root, str(tmp_path)), Recorder())
    trainer.prepare()
    params = list(trainer.model.parameters())
    assert all(torch.count_nonzero(trainer.optimizer.state[p]["momentum_buffer"]) == 0 for p in params)


# ----- item 2: the current device on the thread that trains ---------------------------------

def test_use_device_makes_a_gpu_current_on_the_calling_thread_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append((threading.get_ident(), d)))
    use_device(torch.device("cpu"))
    assert calls == []
    use_device(torch.device("cuda", 1))
    assert calls == [(threading.get_ident(), torch.device("cuda", 1))]


@pytest.mark.slow
def test_the_thread_that_trains_binds_the_trainers_device_and_creates_tensors_only_there(
        root, tmp_path, monkeypatch):
    import core.engine

    bound = []
    monkeypatch.setattr(core.engine, "use_device",
                        lambda device: (bound.append((threading.get_ident(), device)), use_device(device)))
    rec = Recorder()
    trainer = make_trainer(config(root, str(tmp_path), epochs=1, max_steps_per_epoch=2, max_val_batches=1), rec)
    trainer.prepare()  # on this thread, as the CLI does
    devices = TensorDevices()
    result = {}

    def train():
        result["ident"] = threading.get_ident()
        with devices:
            result["finished"] = trainer.run()

    thread = threading.Thread(target=train)
    thread.start()
    thread.join(300)
    assert result["finished"].reason == "completed"
    assert (result["ident"], trainer.device) in bound
    assert devices.seen and devices.seen <= {trainer.device.type}, devices.seen


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.slow
def test_on_a_gpu_the_trainer_thread_has_the_trainers_device_current(root, tmp_path):
    index = torch.cuda.device_count() - 1
    current = []
    rec = Recorder(lambda e: isinstance(e, StepStats) and current.append(torch.cuda.current_device()))
    trainer = make_trainer(config(root, str(tmp_path), epochs=1, max_steps_per_epoch=2, max_val_batches=1,
                                  device=f"cuda:{index}"), rec)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("finished", trainer.run()))
    thread.start()
    thread.join(300)
    assert result["finished"].reason == "completed"
    assert current and set(current) == {index}


# ----- item 3: evaluation reads the host once ------------------------------------------------

def _val_batches(root: str, bad_every: int = 0) -> list:
    index = WebVisionIndex.load(root, num_classes=4)
    val = WebVisionDataset(index.val, val_transform(32), seed=0, train=False)
    batches = list(make_loader(val, list(range(len(val))), 5, 0, pin_memory=False, drop_last=False))
    if bad_every:
        for images, labels, bad in batches:
            labels[::bad_every] = -1  # what the dataset yields for an unreadable val image
    return batches


def test_evaluation_counts_on_the_device_and_reads_the_host_once(synthetic_root):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    batches = _val_batches(synthetic_root)
    with HostReads() as reads:
        totals = evaluate(model, batches, torch.device("cpu"), 4)
    assert reads.calls == ["tolist"], reads.calls  # no bincount, no mask indexing, no .item()
    assert totals.images == totals.images_total == 16


def test_evaluation_scores_only_readable_images_and_reports_n_of_m(synthetic_root):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4)).eval()
    batches = _val_batches(synthetic_root, bad_every=3)
    totals = evaluate(model, batches, torch.device("cpu"), 4)
    # The same numbers computed plainly on the host, over the readable images only.
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    from core.data import normalize_on_device

    with torch.inference_mode():
        logits = model(normalize_on_device(images)).float()
    keep = labels >= 0
    top1 = logits.argmax(1)
    assert (totals.images, totals.images_total) == (int(keep.sum()), len(labels))
    assert totals.images < totals.images_total
    assert totals.hits1 == int((top1[keep] == labels[keep]).sum())
    per_class = [int((labels == c).sum()) for c in range(4)]
    assert list(totals.per_class_images) == per_class
    assert totals.loss == pytest.approx(float(nn.functional.cross_entropy(logits[keep], labels[keep])), rel=1e-5)


# ----- item 5: after an out-of-memory error nothing of the step stays alive -------------------

@pytest.mark.slow
def test_the_oom_handler_releases_the_failed_steps_tensors(root, tmp_path):
    holder = {}

    def on_event(e):
        if isinstance(e, RunError) and e.kind == "oom":
            model = holder["t"].model
            holder["alive"] = [r() is not None for r in model.refs]
            holder["grads"] = [p.grad is not None for p in holder["t"].model.parameters()]

    rec = Recorder(on_event)
    cfg = config(root, str(tmp_path), epochs=1, max_steps_per_epoch=4)
    trainer = holder["t"] = make_trainer(cfg, rec, model_factory=faulty(3, "oom"))
    assert trainer.run().reason == "error"
    assert holder["alive"] == [False, False], "the step's input or output outlived the handler"
    assert not any(holder["grads"])


# ----- item 6: each rank's own CUDA generator ----------------------------------------------------

def test_each_rank_restores_its_own_cuda_generator_and_another_rank_count_is_reported():
    states = [torch.full((16,), r, dtype=torch.uint8) for r in range(2)]
    own, warning = own_cuda_rng(states, rank=1, world_size=2)
    assert torch.equal(own, states[1]) and warning is None
    own, warning = own_cuda_rng(states, rank=0, world_size=4)
    assert own is None and "2 rank(s)" in warning and "4" in warning
    assert own_cuda_rng(None, rank=0, world_size=1) == (None, None)


# ----- item 8: gradients are cleared before the forward -----------------------------------------

@pytest.mark.slow
def test_gradients_are_gone_before_each_training_forward(root, tmp_path):
    seen = []

    def before_forward(module, args):
        if module.training:
            seen.append(all(p.grad is None for p in module.parameters()))

    def factory(name, num_classes):
        model = faulty(10**9, "none")(name, num_classes)
        model.register_forward_pre_hook(before_forward)
        return model

    cfg = config(root, str(tmp_path), epochs=1, max_steps_per_epoch=3, max_val_batches=1)
    assert make_trainer(cfg, Recorder(), model_factory=factory).run().reason == "completed"
    assert seen == [True, True, True]


# ----- item 9: --amp against the trainer's GPU ---------------------------------------------------

@pytest.mark.parametrize("capability, amp, expected", [
    ((7, 5), "auto", "fp16"), ((8, 0), "auto", "bf16"), ((8, 0), "bf16", "bf16"), ((7, 0), "fp16", "fp16"),
    ((7, 5), "bf16", ValueError),
])
def test_amp_is_resolved_for_the_trainers_gpu_and_emulated_bf16_is_refused(monkeypatch, capability, amp, expected):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (asked.append(d), capability)[1])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Old GPU")
    monkeypatch.setattr(torch.version, "hip", None)
    device = torch.device("cuda", 1)
    if expected is ValueError:
        with pytest.raises(ValueError, match="--amp bf16 is not supported natively by cuda:1"):
            resolve_amp(amp, device)
    else:
        assert resolve_amp(amp, device) == expected
    assert asked and all(d == device for d in asked)
    assert resolve_amp("auto", torch.device("cpu")) == "off"

