"""The README's generated benchmark tables match benchmarks/results/*.json."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_tables_are_generated_from_the_results():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "readme_tables.py"),
                           "--check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
