"""CLI behaviour: clear errors, non-zero exit, no traceback."""
import subprocess
import sys


from locdistill.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "locdistill", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for c in ("train", "test", "demo", "configs"):
        assert c in r.stdout


def test_unknown_config_is_a_clean_error():
    r = run_cli("train", "gfl/no_such_config")
    assert r.returncode == 2
    assert "config 'gfl/no_such_config' not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_key_is_a_clean_error(capsys):
    assert main(["train", "gfl/gfl_r50_fpn_coco_1x", "--set", "train.epochz=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.epochz'" in err and "train.epochs" in err


def test_missing_dataset_is_a_clean_error(tmp_path, capsys):
    rc = main(["train", "gfl/gfl_r18_fpn_coco_1x", "--work-dir", str(tmp_path / "w"), "--set",
               f"data.train_json={tmp_path}/nope.json", f"data.train_images={tmp_path}",
               f"data.val_json={tmp_path}/nope.json", f"data.val_images={tmp_path}", "train.device=cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "nope.json" in err


def test_invalid_json_is_a_clean_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{\"images\": [}")
    rc = main(["test", "gfl/gfl_r18_fpn_coco_1x", str(tmp_path / "x.pth"), "--set",
               f"data.val_json={bad}", f"data.val_images={tmp_path}"])
    assert rc == 2
    assert "x.pth" in capsys.readouterr().err  # the checkpoint is checked first


def test_debug_shows_traceback():
    r = run_cli("--debug", "train", "gfl/no_such_config")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_configs_command_lists_names():
    r = run_cli("configs")
    assert r.returncode == 0 and "gfl/gfl_r50_fpn_coco_1x" in r.stdout.split()
