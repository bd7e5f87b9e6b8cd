"""Training curves from a JSON-lines log: what is read, which panels are drawn, errors."""

from __future__ import annotations

import json
import sys

import pytest

from metareid.viz import plot_training_curves

plots = sys.modules["metareid.viz.plots"]

PANEL_WIDTH, HEIGHT = 750, 570  # 5 in and 3.8 in at 150 dpi


def trainer_log() -> list[dict]:
    """Records as the trainer writes them, plus kinds and keys the plot must ignore."""
    records: list[dict] = []
    for epoch in range(2):
        for step in range(1, 4):
            it = epoch * 3 + step
            records.append(
                {
                    "kind": "iter",
                    "epoch": epoch,
                    "iter": it,
                    "lr": 3.5e-4 * (0.1**epoch),
                    "loss": 6.0 / it,
                    "meta_train_loss": 4.0 / it,
                    "meta_test_loss": 2.0 / it,
                    "meta_test_domain": float(it % 3),  # numeric but not a loss
                }
            )
        records.append({"kind": "epoch", "epoch": epoch, "seconds": 12.5, "loss": 99.0})
        records.append(
            {
                "kind": "eval",
                "epoch": epoch,
                "mAP": 30.0 + epoch,
                "rank1": 50.0 + epoch,
                "rank5": 70.0,
                "rank10": 75.0,
                "mINP": 10.0,
            }
        )
    records.append({"kind": "hparams", "iter": 1, "loss": 1e9})  # unknown kind
    return records


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")


# ---------------------------------------------------------------- what is read


def test_default_keys_are_losses_then_lr():
    assert plots._default_keys(trainer_log()) == [
        "loss",
        "meta_train_loss",
        "meta_test_loss",
        "lr",
    ]


def test_series_skip_other_kinds_bad_values_and_sort_by_x():
    records = [
        {"kind": "iter", "iter": 3, "loss": 3.0},
        {"kind": "iter", "iter": 1, "loss": 1.0, "extra": "x"},
        {"kind": "iter", "iter": 2, "loss": "nan?"},  # not a number
        {"kind": "iter", "iter": 4, "loss": True},  # bools are not numbers
        {"kind": "iter", "loss": 5.0},  # no x value
        {"kind": "epoch", "iter": 6, "loss": 6.0},
        {"iter": 7, "loss": 7.0},  # no kind
        {"kind": "iter", "iter": 8},  # missing key
    ]
    series = plots._series(records, "iter", "iter", ["loss", "lr"])
    assert series == {"loss": ([1.0, 3.0], [1.0, 3.0])}


def test_eval_series_read_every_metric_against_epoch():
    series = plots._series(trainer_log(), "eval", "epoch", plots._EVAL_KEYS)
    assert series["mAP"] == ([0.0, 1.0], [30.0, 31.0])
    assert set(series) == {"mAP", "mINP", "rank1", "rank5", "rank10"}


# ---------------------------------------------------------------- drawing


def image_size(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_trainer_log_file_gives_three_panels(tmp_path):
    pytest.importorskip("matplotlib")
    write_jsonl(tmp_path / "log.jsonl", trainer_log())
    out = plot_training_curves(tmp_path / "log.jsonl", tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    assert image_size(out) == (3 * PANEL_WIDTH, HEIGHT)


@pytest.mark.parametrize(
    ("keys", "kinds", "panels"),
    [
        (["loss"], ("iter", "eval"), 2),  # no "lr" selected: no learning-rate panel
        (["lr"], ("iter",), 1),
        (None, ("eval",), 1),
        (["missing_key"], ("iter", "eval"), 1),  # missing keys are fine
    ],
)
def test_panels_follow_the_data(tmp_path, keys, kinds, panels):
    pytest.importorskip("matplotlib")
    records = [r for r in trainer_log() if r["kind"] in kinds]
    out = plot_training_curves(records, str(tmp_path / "c.png"), keys=keys)
    assert image_size(out) == (panels * PANEL_WIDTH, HEIGHT)


def test_non_finite_and_non_positive_lr_are_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    records = [
        {"kind": "iter", "iter": 1, "loss": float("nan"), "lr": 0.0},
        {"kind": "iter", "iter": 2, "loss": 1.0, "lr": 0.1},
    ]
    assert plot_training_curves(records, tmp_path / "c.png").is_file()


# ---------------------------------------------------------------- errors


def test_invalid_json_line_is_reported_with_its_number(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"kind": "iter", "iter": 1, "loss": 1.0}\n\n{"kind": "iter", "iter": 2,\n')
    with pytest.raises(ValueError, match=r"log: line 3 of .* is not valid JSON"):
        plot_training_curves(log, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_non_object_line_is_rejected(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=r"line 1 .* must be a JSON object, got list"):
        plot_training_curves(log, tmp_path / "c.png")


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        plot_training_curves(tmp_path / "nope.jsonl", tmp_path / "c.png")


@pytest.mark.parametrize(
    ("log", "keys", "error", "match"),
    [
        ([], None, ValueError, r"log holds nothing to draw.*\(0 records read\)"),
        ([{"kind": "epoch", "loss": 1.0}], None, ValueError, "log holds nothing to draw"),
        ([{"kind": "iter", "iter": 1, "loss": 1.0}], ["acc"], ValueError, "nothing to draw"),
        ([{"kind": "iter"}, 3], None, TypeError, r"log\[1\] must be a mapping"),
        (42, None, TypeError, "log must be a path"),
        ([{"kind": "iter", "iter": 1, "loss": 1.0}], "loss", TypeError, "keys must be"),
        ([{"kind": "iter", "iter": 1, "loss": 1.0}], [1], TypeError, "keys must be"),
    ],
)
def test_bad_logs_raise_before_drawing(tmp_path, log, keys, error, match):
    with pytest.raises(error, match=match):
        plot_training_curves(log, tmp_path / "c.png", keys=keys)
    assert not (tmp_path / "c.png").exists()


def test_bad_path_raises():
    with pytest.raises(TypeError, match="path must be"):
        plot_training_curves([{"kind": "iter", "iter": 1, "loss": 1.0}], 3)


def test_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "metareid\[viz\]"'):
        plot_training_curves(trainer_log(), tmp_path / "c.png")
