"""What a new user sees in the first hour: tables, progress lines, demo report, pictures."""
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
