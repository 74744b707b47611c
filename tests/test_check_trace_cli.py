"""`python -m iovalab check-trace`: kernel reference traces replay with zero mismatches."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from iovalab.trace.reference import TraceFormatError, check_trace

DATA = Path(__file__).resolve().parent.parent / "data" / "kernel-traces"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "iovalab", *args], capture_output=True, text=True)


@pytest.mark.parametrize("name", ["iova-4k.jsonl", "iova-64k.jsonl"])
def test_iova_traces_zero_mismatches(name):
    res = check_trace(DATA / name)
    assert res.ops > 2000
    assert res.n_mismatches == 0, [str(m) for m in res.mismatches[:3]]


def test_cli_total_line_and_exit_code():
    p = run_cli("check-trace", str(DATA / "iova-64k.jsonl"))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[0] == f"{DATA / 'iova-64k.jsonl'}: 2080 ops, 0 mismatches"
    assert lines[-1] == "TOTAL: 2080 ops, 0 mismatches"


def test_cli_reports_mismatch(tmp_path):
    src = (DATA / "iova-4k.jsonl").read_text().splitlines()
    # corrupt the first alloc's expectation
    for i, line in enumerate(src):
        obj = json.loads(line)
        if obj.get("op") == "alloc":
            obj["expect"] = 1234
            src[i] = json.dumps(obj)
            break
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(src[:60]) + "\n")
    p = run_cli("check-trace", str(bad))
    assert p.returncode == 1
    assert "expected 1234" in p.stdout
    assert p.stdout.strip().splitlines()[-1].startswith("TOTAL: 59 ops, ")


def test_malformed_line_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    head = (DATA / "iova-4k.jsonl").read_text().splitlines()[0]
    bad.write_text(head + '\n{"op":"alloc","size":1\n')
    with pytest.raises(TraceFormatError, match=r"bad.jsonl:2: not valid JSON"):
        check_trace(bad)
    p = run_cli("check-trace", str(bad))
    assert p.returncode == 2 and "bad.jsonl:2" in p.stderr


def test_unknown_op_and_kind(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind":"nope"}\n')
    with pytest.raises(TraceFormatError, match="unknown trace kind 'nope'"):
        check_trace(bad)
    head = (DATA / "iova-4k.jsonl").read_text().splitlines()[0]
    bad.write_text(head + '\n{"op":"frobnicate"}\n')
    with pytest.raises(TraceFormatError, match=r":2: unknown op"):
        check_trace(bad)
