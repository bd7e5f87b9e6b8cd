"""Training progress: a bar on a terminal, plain lines without one (no ``\\r`` in logs)."""

from __future__ import annotations

import io
import re
import sys

import pytest
from tiny_setup import one_thread, tiny_train_config  # noqa: F401  (autouse fixture)

from metareid.engine import ProgressLines, Trainer, progress_style
from metareid.engine.progress import format_duration


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("enabled", "ttys", "style"),
    [
        (True, (True, True), "bar"),
        (True, (False, True), "lines"),  # stdout into a file: tqdm's \r would follow
        (True, (True, False), "lines"),  # stderr (tqdm's stream) into a file
        (True, (False, False), "lines"),  # nohup, cluster job, CI
        (False, (True, True), "off"),
        (False, (False, False), "off"),
    ],
)
def test_style_follows_the_streams(enabled, ttys, style):
    assert progress_style(enabled, [_Stream(t) for t in ttys]) == style


def test_style_reads_stdout_and_stderr_when_called(monkeypatch):
    monkeypatch.setattr(sys, "stdout", _Stream(True))
    monkeypatch.setattr(sys, "stderr", _Stream(True))
    assert progress_style(True) == "bar"
    monkeypatch.setattr(sys, "stdout", _Stream(False))
    assert progress_style(True) == "lines"
    monkeypatch.setattr(sys, "stdout", object())  # no isatty at all
    assert progress_style(True) == "lines"
    monkeypatch.setattr(sys, "stdout", None)  # pythonw: no stdout
    assert progress_style(True) == "lines"


def test_style_rejects_a_non_bool():
    with pytest.raises(TypeError, match="enabled must be a bool, got 'yes'"):
        progress_style("yes")  # type: ignore[arg-type]


LINE = re.compile(
    r"epoch (\d)/2 iter (\d)/3  loss \d+\.\d{3}  meta_train_loss \d+\.\d{3}  "
    r"meta_test_loss \d+\.\d{3}  \d+\.\d\d it/s \(\d+\.\d{3} s/it\)  "
    r"eta \d+:\d\d:\d\d \(run \d+:\d\d:\d\d\)"
)


def test_without_a_terminal_progress_is_one_line_every_log_every_iterations(
    tiny_bench, tmp_path, monkeypatch
):
    out, err = _Stream(False), _Stream(False)
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    lines: list[str] = []
    cfg = tiny_train_config(
        tiny_bench, tmp_path / "run", epochs=2, iters_per_epoch=3, log_every=2, progress=True
    )
    trainer = Trainer(cfg, log=lines.append)
    assert trainer.progress_style == "lines"
    trainer.fit()
    progress = [line for line in lines if line.startswith("epoch ") and " iter " in line]
    # Every 2 iterations and at the end of every epoch: 2 and 3 in both epochs.
    groups = [LINE.fullmatch(line).groups() for line in progress]  # type: ignore[union-attr]
    assert groups == [("1", "2"), ("1", "3"), ("2", "2"), ("2", "3")]
    assert progress[-1].endswith("eta 0:00:00 (run 0:00:00)")
    assert not any("\r" in line for line in lines)
    assert "\r" not in out.getvalue() + err.getvalue()  # no bar was drawn anywhere


def test_on_a_terminal_the_bar_is_drawn_and_no_line_is_logged(tiny_bench, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _Stream(True))
    err = _Stream(True)
    monkeypatch.setattr(sys, "stderr", err)
    lines: list[str] = []
    cfg = tiny_train_config(tiny_bench, tmp_path / "run", iters_per_epoch=3, progress=True)
    trainer = Trainer(cfg, log=lines.append)
    assert trainer.progress_style == "bar"
    assert not any(isinstance(cb, ProgressLines) for cb in trainer.callbacks)
    trainer.fit()
    assert "epoch 1/1" in err.getvalue() and "\r" in err.getvalue()  # tqdm's bar
    assert not any(" iter " in line for line in lines)


def test_no_progress_shows_nothing(tiny_bench, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _Stream(False))
    cfg = tiny_train_config(tiny_bench, tmp_path / "run", progress=False)
    trainer = Trainer(cfg, log=lambda s: None)
    assert trainer.progress_style == "off"
    assert not any(isinstance(cb, ProgressLines) for cb in trainer.callbacks)


def test_the_line_reports_speed_and_both_etas():
    line = ProgressLines.line(
        epoch=0,
        epochs=3,
        index=9,
        iters=40,
        losses={"loss": 1.23456, "meta_test_domain": 1.0, "grad_norm": 7.0, "id_loss": 0.5},
        seconds=5.0,
        remaining=110,
    )
    assert line == (
        "epoch 1/3 iter 10/40  loss 1.235  id_loss 0.500  2.00 it/s (0.500 s/it)  "
        "eta 0:00:15 (run 0:00:55)"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0:00:00"), (59.6, "0:01:00"), (3599, "0:59:59"), (3600 * 30 + 61, "30:01:01")],
)
def test_durations(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), -1.0])
def test_unknown_durations(seconds):
    assert format_duration(seconds) == "?"
