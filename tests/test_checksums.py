"""make checksums / make verify: a sorted sha256 manifest that catches a single changed byte."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make(*args):
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_checksums_then_verify_and_a_corrupted_byte_is_named(tmp_path):
    res = tmp_path / "results"
    files = [res / "a" / "results" / "x_fold0.json.gz", res / "a" / "results" / "x_fold1.json.gz",
             res / "b" / "checkpoints" / "y_epoch3.params"]
    for i, f in enumerate(files):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(bytes(range(256)) * (i + 1))
    manifest = tmp_path / "results.sha256"
    args = [f"RESULTS={res}", f"CHECKSUMS={manifest}"]
    assert make("checksums", *args).returncode == 0
    lines = manifest.read_text().splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == sorted(map(str, files))
    ok = make("verify", *args)
    assert ok.returncode == 0 and "OK" in ok.stdout

    blob = bytearray(files[1].read_bytes())
    blob[100] ^= 1
    files[1].write_bytes(bytes(blob))
    bad = make("verify", *args)
    assert bad.returncode != 0
    assert "FAILED" in bad.stdout and str(files[1]) in bad.stdout and str(files[0]) not in bad.stdout

    files[1].unlink()
    gone = make("verify", *args)
    assert gone.returncode != 0 and str(files[1]) in gone.stdout
