from __future__ import annotations

import argparse
import json

import pytest

from metareid.engine import TrainConfig
from metareid.engine.build import resolve_input


def test_defaults_are_the_papers():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.weight_decay, cfg.epochs, cfg.iters_per_epoch) == (3.5e-4, 5e-4, 60, 200)
    assert (cfg.warmup_epochs, cfg.warmup_factor, cfg.milestones, cfg.gamma) == (
        10,
        0.01,
        (30, 50),
        0.1,
    )
    assert (cfg.num_identities, cfg.num_instances) == (16, 4)
    assert (cfg.height, cfg.width, cfg.mean, cfg.std) == (None, None, None, None)  # the arch's:
    resolved = resolve_input(cfg)  # ResNet-50: 256 x 128 and ImageNet's statistics
    assert (resolved.height, resolved.width) == (256, 128)
    assert resolved.mean == (0.485, 0.456, 0.406) and resolved.std == (0.229, 0.224, 0.225)
    assert (cfg.memory_momentum, cfg.temperature, cfg.margin) == (0.2, 0.05, 0.3)
    assert cfg.method == "m3l" and cfg.memory_update_rule == "mean" and cfg.sample_scale == "std"


def test_file_round_trip_and_flags_override(tmp_path):
    cfg = TrainConfig(method="meta", epochs=3, sources=("a", "b"), target="c")
    path = tmp_path / "cfg.json"
    cfg.save(path)
    assert TrainConfig.from_file(path) == cfg
    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    args = parser.parse_args(
        "--epochs 7 --no-triplet --milestones 2 5 --method baseline --inner-eps 3e-7".split()
    )
    new = TrainConfig.from_args(args, cfg)
    assert (new.epochs, new.triplet, new.milestones, new.method) == (7, False, (2, 5), "baseline")
    assert new.inner_eps == 3e-7 and isinstance(new.inner_eps, float)
    assert TrainConfig.from_args(parser.parse_args([]), cfg).inner_eps is None
    assert new.sources == ("a", "b")  # untouched fields keep the file's values


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(method="maml"), "method must be one of 'baseline', 'meta', 'm3l'; got 'maml'"),
        (dict(epochs=0), "epochs must be an int >= 1, got 0"),
        (dict(memory_momentum=1.5), r"memory_momentum must lie in \[0, 1\], got 1.5"),
        (dict(lr=0.0), "lr must be > 0"),
        (dict(sources=("a",)), "needs at least two sources"),
        (dict(target="msmt17"), "target 'msmt17' is also a source"),
        (dict(id_loss="none", triplet=False), "no loss"),
        (dict(num_instances=1), "num_instances must be >= 2"),
        (dict(inner_eps=0.0), "inner_eps must be None or a number > 0, got 0.0"),
        (dict(inner_eps="1e-8"), "inner_eps must be None or a number > 0, got '1e-8'"),
    ],
)
def test_bad_values_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_unknown_keys_and_bad_files(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config keys \['epochz'\]"):
        TrainConfig.from_dict({"epochz": 3})
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        TrainConfig.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TrainConfig.from_file(bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="JSON object"):
        TrainConfig.from_file(bad)


# ---------------------------------------------------------------------------- presets
def test_presets_set_every_switch_and_explicit_values_win(tmp_path):
    import json

    from metareid.cli import build_parser
    from metareid.engine import PRESETS, TrainConfig, preset_deviations

    for name, switches in PRESETS.items():
        args = build_parser().parse_args(["train", "--preset", name])
        cfg = TrainConfig.from_args(args)
        assert cfg.preset == name and preset_deviations(cfg) == {}
        for key, value in switches.items():
            assert getattr(cfg, key) == value, (name, key)
    args = build_parser().parse_args(
        ["train", "--preset", "published", "--memory-update-rule", "mean", "--inner-eps-root", "0"]
    )
    cfg = TrainConfig.from_args(args)
    assert cfg.memory_update_rule == "mean" and cfg.sample_scale == "var"
    assert preset_deviations(cfg) == {
        "memory_update_rule": ("sequential", "mean"),
        "inner_eps_root": (1e-5, 0.0),
    }
    # A config file: the preset fills the keys the file does not give.
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"preset": "paper", "share_lambda": True}))
    cfg = TrainConfig.from_file(path)
    assert cfg.inner_eps_root == 0.0 and cfg.share_lambda is True
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # round trip applies nothing new
    saved = tmp_path / "config.json"
    cfg.save(saved)
    assert json.loads(saved.read_text())["preset"] == "paper"


def test_defaults_are_published_inner_step_second_order_and_fp32():
    from metareid.engine import TrainConfig

    cfg = TrainConfig()
    assert (cfg.inner_eps_root, cfg.meta_test_grad, cfg.amp, cfg.preset) == (
        1e-5,
        "full",
        "off",
        "none",
    )


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("preset", "authors", "preset must be one of"),
        ("inner_eps_root", -1e-5, "inner_eps_root must be a finite number >= 0"),
        ("inner_eps_root", float("inf"), "inner_eps_root must be a finite number >= 0"),
        ("amp", "auto", "amp must be one of 'off', 'bf16', 'fp16'"),
    ],
)
def test_bad_preset_eps_root_and_amp_values(key, value, match):
    from metareid.engine import TrainConfig

    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict({key: value})


def test_run_label_and_preset_line_record_the_preset():
    from metareid.engine import TrainConfig, describe_preset, run_label

    cfg = TrainConfig.from_dict({"preset": "published", "sample_scale": "std"})
    assert run_label(cfg) == "m3l [published*: sample_scale] -> market1501"
    assert describe_preset(cfg) == (
        "preset: published, overridden: sample_scale='std' (preset 'var')"
    )


def test_every_published_quirk_is_a_switch_with_both_values():
    from metareid.engine import PRESETS

    published, paper = PRESETS["published"], PRESETS["paper"]
    expected = {
        "meta_test_grad": ("second_order_only", "full"),
        "meta_test_bn_stats": ("update", "frozen"),
        "stem_relu": (False, True),
        "load_running_stats": (False, True),
        "freeze_neck_bias": (False, True),
        "weight_decay_scope": ("all", "all"),
        "ibn_init": ("torchvision", "ibn_net"),
        "sampler": ("published", "balanced"),
        "dataparallel": (3, 1),
    }
    for key, (pub, pap) in expected.items():
        assert (published[key], paper[key]) == (pub, pap), key
    assert published["eval_every"] == 1


def test_first_order_of_earlier_versions_is_read_as_meta_test_grad():
    from metareid.engine import TrainConfig

    assert TrainConfig.from_dict({"first_order": True}).meta_test_grad == "first_order"
    assert TrainConfig.from_dict({"first_order": False}).meta_test_grad == "full"
    with pytest.raises(ValueError, match=r"first_order=True .* contradicts meta_test_grad='full'"):
        TrainConfig.from_dict({"first_order": True, "meta_test_grad": "full"})
    with pytest.raises(ValueError, match=r"first_order \(now meta_test_grad\) must be one of"):
        TrainConfig.from_dict({"first_order": "yes"})
    assert not hasattr(TrainConfig(), "first_order")


@pytest.mark.parametrize(
    ("old", "new", "value"),
    [
        ("memory_update", "memory_update_rule", "sequential"),
        ("metabn_scale", "sample_scale", "var"),
    ],
)
def test_renamed_keys_of_earlier_versions(old, new, value):
    from metareid.config import config_value
    from metareid.engine import TrainConfig

    assert getattr(TrainConfig.from_dict({old: value}), new) == value
    assert config_value({old: value}, new) == value  # checkpoints of earlier versions
    with pytest.raises(ValueError, match=rf"{old}=.* contradicts {new}="):
        TrainConfig.from_dict({old: value, new: "mean" if new == "memory_update_rule" else "std"})
    with pytest.raises(ValueError, match=rf"{old} \(now {new}\) must be one of"):
        TrainConfig.from_dict({old: "ema"})
    assert not hasattr(TrainConfig(), old)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(dataparallel=0), "dataparallel must be an int >= 1, got 0"),
        (dict(dataparallel=True), "dataparallel must be an int >= 1, got True"),
        (dict(dataparallel=2, micro_batches=2), "two ways to split a batch"),
        (dict(meta_test_grad="second"), "meta_test_grad must be one of"),
        (dict(meta_test_bn_stats="keep"), "meta_test_bn_stats must be one of"),
        (dict(weight_decay_scope="bn"), "weight_decay_scope must be one of"),
        (dict(sampler="random"), "sampler must be one of"),
        (dict(ibn_init="resnet"), "ibn_init must be one of"),
    ],
)
def test_bad_new_switches_name_the_field(kwargs, match):
    from metareid.engine import TrainConfig

    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_the_switches_reach_the_components(tmp_path):
    from types import SimpleNamespace

    import torch

    from metareid.distributed import MicroBatchRanks
    from metareid.engine import DataParallelSplit, IdentitySplit, TrainConfig
    from metareid.engine.build import build_components, build_model_from_config, build_split

    sources = SimpleNamespace(num_classes_per_domain=[3, 3], pid_offsets=[0, 3])
    cfg = TrainConfig.from_dict(
        dict(preset="published", arch="resnet10", pretrained="none", sources=["a", "b"], target="c")
    )
    model = build_model_from_config(cfg, sources)  # type: ignore[arg-type]
    assert model.backbone.stem_relu is False and model.neck.bias.requires_grad
    assert model.neck.sample_scale == "var"
    parts = build_components(
        cfg, model, sources, feat_dim=model.feat_dim, device=torch.device("cpu")
    )  # type: ignore[arg-type]
    assert isinstance(parts.split, DataParallelSplit) and parts.split.num_devices == 3
    assert parts.step.memory_update_timing == "after"
    assert parts.learner is not None
    assert parts.learner.meta_test_grad == "second_order_only"
    assert parts.learner.meta_test_bn_stats == "update"
    assert len(parts.optimizer.param_groups) == 1  # weight decay on every parameter
    assert parts.optimizer.param_groups[0]["weight_decay"] == 5e-4
    other = TrainConfig(weight_decay_scope="no_norm_bias", sources=("a", "b"), target="c")
    parts = build_components(
        other, model, sources, feat_dim=model.feat_dim, device=torch.device("cpu")
    )  # type: ignore[arg-type]
    decay, free = parts.optimizer.param_groups
    assert free["weight_decay"] == 0.0 and any(p is model.neck.weight for p in free["params"])
    assert all(p.dim() > 1 for p in decay["params"])  # conv weights only
    assert isinstance(build_split(TrainConfig()), IdentitySplit)
    with pytest.raises(ValueError, match="cannot be combined with ranks"):
        build_split(TrainConfig(dataparallel=3), MicroBatchRanks(2))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("height", 0, "height must be None or an int >= 1, got 0"),
        ("width", 2.5, "width must be None or an int >= 1, got 2.5"),
        ("mean", (0.5, 0.5), r"mean must be None or three numbers \(R, G, B\)"),
        ("std", (0.5, 0.0, 0.5), r"std must be None or three numbers > 0"),
        ("last_stride", 3, "last_stride must be 1 or 2, got 3"),
        ("arch", "", "arch must be a non-empty string"),
    ],
)
def test_input_and_arch_fields_are_checked(key, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{key: value})


def test_mean_and_std_flags_take_three_numbers():
    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    args = parser.parse_args(["--mean", "0.5", "0.5", "0.5", "--std", "0.2", "0.2", "0.2"])
    cfg = TrainConfig.from_args(args)
    assert cfg.mean == (0.5, 0.5, 0.5) and cfg.std == (0.2, 0.2, 0.2)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(SystemExit):
        parser.parse_args(["--mean", "0.5", "0.5"])
