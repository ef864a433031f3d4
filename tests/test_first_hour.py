"""What a new user sees in the first hour: tables, progress lines, demo report, pictures."""
import io
import math

from rich.console import Console

from locdistill.engine.logging import format_ap, metrics_table


def test_format_ap_missing_undefined_and_values():
    assert format_ap(None) == "-"
    assert format_ap(-1.0) == "n/a"  # pycocotools: no ground truth of that kind
    assert format_ap(math.nan) == "n/a"
    assert format_ap(math.inf) == "n/a"
    assert format_ap(0.0) == "0.0"
    assert format_ap(0.4567) == "45.7"
    assert format_ap(1.0) == "100.0"


def test_metrics_table_shows_undefined_ap_as_na():
    con = Console(width=120, record=True)
    con.print(metrics_table([("student", {"AP": 0.405, "APs": -1.0})], columns=("AP", "APs", "APm")))
    row = [line for line in con.export_text().splitlines() if "student" in line][0]
    assert "40.5" in row and "n/a" in row and "-100.0" not in row
    assert row.split("│")[-2].strip() == "-"  # APm missing


# ----------------------------------------------------------------------------- progress display


def _run_progress(out, steps, seconds_per_step, total=50, info="", **fields):
    """Drive a training-like progress display on ``out`` with a fake clock; returns the bar."""
    from locdistill.engine.logging import make_progress

    clock = [0.0]
    bar = make_progress(out=out, get_time=lambda: clock[0])
    with bar:
        task = bar.add_task("epoch 3/24", total=total, info="", **fields)
        for _ in range(steps):
            clock[0] += seconds_per_step
            bar.update(task, advance=1, info=info)
    return bar


LOSSES = "loss=1.234 qfl=0.456 bbox=0.789 dfl=0.123 ld=0.111 vlr=0.222 kd=0.333 lr=1.00e-02"


def test_progress_keeps_bar_count_elapsed_and_eta_at_80_columns(monkeypatch):
    monkeypatch.delenv("LOCDISTILL_NO_PROGRESS", raising=False)
    con = Console(width=80, force_terminal=True, record=True)
    bar = _run_progress(Console(file=io.StringIO(), force_terminal=True), 12, 1.5, info=LOSSES)
    con.print(bar)
    lines = con.export_text().splitlines()
    first = lines[0]
    assert "━" in first and "12/50" in first
    assert "0:00:18" in first  # 12 steps of 1.5 s
    assert "eta 0:00:57" in first  # 38 steps left at 1.5 s
    assert all(len(line) <= 80 for line in lines)
    assert LOSSES.split() == " ".join(lines[1:]).split()  # every loss, on the lines below


def test_progress_off_a_terminal_prints_plain_lines_every_tenth(monkeypatch):
    monkeypatch.delenv("LOCDISTILL_NO_PROGRESS", raising=False)
    buf = io.StringIO()
    _run_progress(Console(file=buf, width=80), 50, 1.0, info=LOSSES)
    lines = buf.getvalue().splitlines()
    counts = [line.split()[2] for line in lines if line.startswith("epoch 3/24")]
    assert counts == [f"{k}/50" for k in range(5, 51, 5)]
    assert "epoch 3/24  25/50  elapsed 0:25  eta 0:25" in lines
    assert "epoch 3/24  50/50  elapsed 0:50  eta 0:00" in lines
    assert all(len(line) <= 80 for line in lines)
    assert LOSSES.split() == " ".join(lines[-2:]).split()  # the losses follow the last count
    monkeypatch.setenv("LOCDISTILL_NO_PROGRESS", "1")
    buf = io.StringIO()
    _run_progress(Console(file=buf, width=80), 50, 1.0, info=LOSSES)
    assert buf.getvalue() == ""


def test_progress_off_a_terminal_prints_every_30_seconds_when_slow(monkeypatch):
    monkeypatch.delenv("LOCDISTILL_NO_PROGRESS", raising=False)
    buf = io.StringIO()
    _run_progress(Console(file=buf, width=80), 3, 31.0, total=1000)
    assert [line.split()[2] for line in buf.getvalue().splitlines()] == ["1/1000", "2/1000", "3/1000"]


def test_overall_status_line_under_training_progress(monkeypatch):
    from locdistill.engine.logging import overall_status

    monkeypatch.delenv("LOCDISTILL_NO_PROGRESS", raising=False)
    seen = []

    def status(done, total):
        seen.append((done, total))
        return f"whole job: {done}/{total}"

    with overall_status(status):
        con = Console(width=80, force_terminal=True, record=True)
        bar = _run_progress(Console(file=io.StringIO(), force_terminal=True), 12, 1.0, epoch=2, epochs=24)
        con.print(bar)
        buf = io.StringIO()
        _run_progress(Console(file=buf, width=80), 50, 1.0, epoch=2, epochs=24)
    assert "whole job: 112/1200" in con.export_text()  # 2 epochs of 50 + 12
    assert "whole job: 150/1200" in buf.getvalue()
    seen.clear()
    con.print(bar)  # outside the context: no line
    assert not seen


def test_demo_eta_from_the_slowest_run_and_runs_to_come():
    import time

    from locdistill.tools.demo import DemoETA

    class Background:
        def fraction(self, total):
            assert total == 100
            return 0.1

    now = time.perf_counter()
    eta = DemoETA(now - 100)
    eta.t_run = now - 60
    assert eta(25, 100) == "demo: 1:40 so far, about 3:00 to go"  # 60 s for 25%: 180 s more
    eta.runs_after = 1
    assert eta(25, 100) == "demo: 1:40 so far, about 7:00 to go"  # + another run of 240 s
    eta = DemoETA(now - 100, Background())
    eta.t_run = now - 60
    assert eta(25, 100) == "demo: 1:40 so far, about 9:00 to go"  # the background run is at 10%
    assert eta(0, 100).endswith("about ? to go")


# ----------------------------------------------------------------------------- demo


FAKE_CHILD = """
import json, pathlib, sys, time
wd = pathlib.Path(sys.argv[1]); wd.mkdir(parents=True, exist_ok=True)
time.sleep(0.3)                                  # start-up
(wd / "config.json").write_text("{}")            # fit() starts training
time.sleep(0.6)                                  # training
(wd / "metrics.jsonl").write_text(json.dumps({"mode": "val", "epoch": 1, "iter": 8, "time": time.time(), "AP": 0.25}) + "\\n")
"""


def test_background_run_times_the_child_not_the_wait(tmp_path, monkeypatch):
    """The baseline's train time is its own (~0.6 s here), not until the demo asks for it."""
    import sys
    import time

    from locdistill.tools import demo

    monkeypatch.setattr(demo.BackgroundRun, "command",
                        staticmethod(lambda config, work_dir, overrides: [sys.executable, "-c", FAKE_CHILD,
                                                                          str(work_dir)]))
    run = demo.BackgroundRun("demo/gfl_r18_digits", tmp_path / "student", [], threads=1)
    assert run.status().startswith("waiting for the baseline run")
    time.sleep(3.0)  # the foreground run takes longer
    assert not run.running()
    assert run.status().startswith("the baseline run had finished")
    out = run.result()
    assert out["metrics"] == {"AP": 0.25}
    assert 0.5 < out["train_time"] < 1.5
    assert run.fraction(100) == 1.0


def test_reproduce_command_gives_the_teachers_row(tmp_path):
    """The printed `locdistill test` command for the teacher scores it on the student's val split."""
    import json
    import shlex
    import shutil

    from locdistill.cli import main
    from locdistill.tools.demo import (BUNDLED_TEACHER, STUDENT_CONFIG, TEACHER_CONFIG, evaluate_checkpoint,
                                       quick_overrides, reproduce_command)

    ckpt = tmp_path / "teacher.pth"
    shutil.copyfile(BUNDLED_TEACHER, ckpt)
    row = evaluate_checkpoint(TEACHER_CONFIG, ckpt, quick_overrides())
    cmd = shlex.split(reproduce_command(TEACHER_CONFIG, ckpt, quick_overrides(), data_from=STUDENT_CONFIG))
    assert cmd[:4] == ["locdistill", "test", TEACHER_CONFIG, str(ckpt)]
    assert main(cmd[1:] + ["--metrics-out", str(tmp_path / "m.json")]) == 0
    got = json.loads((tmp_path / "m.json").read_text())
    assert row["AP"] > 0.2  # a trained teacher, not an empty score
    assert {k: got[k] for k in ("AP", "AP50", "AR100")} == {k: row[k] for k in ("AP", "AP50", "AR100")}


# ----------------------------------------------------------------------------- pictures


def test_best_box_is_drawn_last_with_a_legible_label(monkeypatch):
    import torch
    from PIL import Image, ImageDraw

    from locdistill.tools.predict import class_colour, draw_detections

    said = []
    real_text = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text",
                        lambda self, xy, text, *a, **kw: said.append((text, kw["font"].size))
                        or real_text(self, xy, text, *a, **kw))
    pil = Image.new("RGB", (160, 160), (255, 255, 255))
    boxes = torch.tensor([[40.0, 40.0, 120.0, 120.0], [40.0, 40.0, 120.0, 120.0]])  # best first, as detected
    out = draw_detections(pil, boxes, torch.tensor([0.79, 0.41]), torch.tensor([6, 2]), [str(i) for i in range(10)])
    assert class_colour(6) != class_colour(2)
    assert out.getpixel((80, 120)) == class_colour(6)  # the shared bottom edge: the best box is on top
    assert out.getpixel((40, 80)) == class_colour(6)
    assert [t for t, _ in said] == ["2: 0.41", "6: 0.79"]
    assert all(size >= 12 for _, size in said)  # readable on a 160 px digits image
