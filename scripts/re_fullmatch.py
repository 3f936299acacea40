"""PEFT's rule for a string `target_modules` (peft/tuners/tuners_utils.py: `re.fullmatch(pattern,
key)`), for tests/lora_targets_python.rs: reads {"patterns": [...], "names": [...]} on stdin and
prints, per pattern, the list of names it selects (JSON).

    echo '{"patterns": ["q|v"], "names": ["q", "x.q"]}' | .venv/bin/python scripts/re_fullmatch.py
"""
import json
import re
import sys

job = json.load(sys.stdin)
print(json.dumps([[n for n in job["names"] if re.fullmatch(p, n)] for p in job["patterns"]]))
