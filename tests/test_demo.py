"""The README's main job, in its seconds-long smoke form."""
import pytest

from locdistill.cli import main


@pytest.mark.slow
def test_demo_quick_runs_teacher_student_and_ld(tmp_path, capsys):
    assert main(["demo", "--quick", "--work-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for row in ("teacher R-34", "student R-18", "student R-18 + LD", "LD gain over the baseline"):
        assert row in out
    assert (tmp_path / "student" / "latest.pth").is_file()
    assert (tmp_path / "student_ld" / "latest.pth").is_file()
    from locdistill.checkpoint import load_checkpoint
    assert not any(k.startswith("teacher") for k in load_checkpoint(tmp_path / "student_ld" / "latest.pth")["model"])


def test_background_run_failure_names_the_log(tmp_path):
    """A baseline run that fails in the background process surfaces its exit status and log tail."""
    from locdistill.tools.demo import BackgroundRun

    run = BackgroundRun("demo/no_such_config", tmp_path / "student", [], threads=1)
    with pytest.raises(RuntimeError) as e:
        run.result()
    msg = str(e.value)
    assert "background baseline run failed" in msg and str(tmp_path / "student.log") in msg
    assert "no_such_config" in msg  # the CLI's own error, read back from the log


def test_demo_setting_teacher_never_saw_the_students_scenes_or_labels():
    """The demo's premise (docs/distillation.md): a teacher trained elsewhere with exact boxes,
    a student trained on its own scenes with noisy boxes, everyone scored on exact val boxes."""
    from locdistill.config import load_config
    from locdistill.data.loader import build_dataset
    from locdistill.tools.demo import LD_CONFIG, STUDENT_CONFIG, TEACHER_CONFIG

    student, teacher, ld = (load_config(c) for c in (STUDENT_CONFIG, TEACHER_CONFIG, LD_CONFIG))
    assert teacher.data.digits_seed != student.data.digits_seed  # other scenes
    assert teacher.data.digits_box_noise == 0.0 < student.data.digits_box_noise
    assert ld.data == student.data and ld.model == student.model and ld.train == student.train
    assert ld.distill.teacher_config == TEACHER_CONFIG
    # the student's val boxes are exact: the same JSON as the noise-free dataset
    small = ["data.digits_train=4", "data.digits_val=3"]
    noisy_val = build_dataset(load_config(STUDENT_CONFIG, small).data, "val")
    exact_val = build_dataset(load_config(STUDENT_CONFIG, small + ["data.digits_box_noise=0.0"]).data, "val")
    assert open(noisy_val.json_path, "rb").read() == open(exact_val.json_path, "rb").read()


@pytest.mark.slow
def test_demo_quick_prints_a_test_command_that_reproduces_each_row(tmp_path, capsys):
    import json
    import shlex

    from locdistill.tools.demo import run_demo

    out = run_demo(tmp_path / "demo", quick=True)
    printed = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("locdistill test ")]
    assert len(printed) == len(out["rows"]) == 3
    assert shlex.split(printed[0])[3] == str(tmp_path / "demo" / "teacher.pth")  # survives a reinstall
    for k, ((name, row), cmd) in enumerate(zip(out["rows"], printed)):
        metrics = tmp_path / f"m{k}.json"
        assert main(shlex.split(cmd)[1:] + ["--metrics-out", str(metrics)]) == 0, name
        got = json.loads(metrics.read_text())
        assert (got["AP"], got["AR100"]) == (row["AP"], row["AR100"]), name
