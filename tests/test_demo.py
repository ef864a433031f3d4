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
