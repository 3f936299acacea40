"""After bench/gpu/probe/subset.sh (run with STEPS=1 or a few steps): which saved adapter tensors of
the cells common to the full grid and the subset differ, and by how much (first place a small pack
computes other numbers)."""
import glob
import sqlite3
from safetensors.torch import load_file


def cells(st):
    db = sqlite3.connect(f"{st}/etagrid.sqlite")
    out = {}
    for cid, a, b in db.execute("select id, lr_a, lr_b from cells where state='done'"):
        f = glob.glob(f"{st}/cells/*/{cid}/adapter/adapter_model.safetensors")
        if f:
            out[(round(a, 12), round(b, 12))] = load_file(f[0])
    return out


full, sub = cells("/tmp/inv-full"), cells("/tmp/inv-subset")
for k in sorted(sub):
    diffs = {n: (full[k][n].float() - t.float()).abs().max().item() for n, t in sub[k].items()}
    bad = {n: d for n, d in diffs.items() if d != 0}
    print(k, f"{len(bad)} of {len(diffs)} tensors differ")
    for n, d in sorted(bad.items(), key=lambda x: -x[1])[:8]:
        print(f"    {n}: max|Δ| {d:.2e}")

# The first step whose train loss differs, per common cell (log_every = 1).
def losses(st):
    db = sqlite3.connect(f"{st}/etagrid.sqlite")
    out = {}
    for a, b, s, v in db.execute("select c.lr_a, c.lr_b, m.step, m.value from metrics m join cells c "
                                 "on c.id = m.cell_id and c.sweep = m.sweep where m.name = 'train_loss'"):
        out.setdefault((round(a, 12), round(b, 12)), {})[s] = v
    return out


lf, ls = losses("/tmp/inv-full"), losses("/tmp/inv-subset")
for k in sorted(ls):
    first = next((s for s in sorted(ls[k]) if ls[k][s] != lf[k].get(s)), None)
    print(k, "first step whose train loss differs:", first)
