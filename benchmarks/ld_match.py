"""How close are students to a teacher at its positives (val): T²·KL at T=10 and T=1, expected-distance gap, IoU.

    python benchmarks/ld_match.py TEACHER_CFG TEACHER_CKPT STUDENT_CKPT [STUDENT_CKPT ...]   (students: demo/gfl_r18_digits)
"""
import sys, os, torch
import torch.nn.functional as F
from locdistill.config import load_config
from locdistill.models import build_detector
from locdistill.distill import build_criterion
from locdistill.checkpoint import load_model_weights
from locdistill.data.loader import build_dataset, build_dataloader
from locdistill.boxes import bbox_overlaps
torch.set_num_threads(1)
tcfg, tck = sys.argv[1:3]; studs = sys.argv[3:]
cfg0 = load_config("demo/gfl_r18_digits")
ds = torch.utils.data.Subset(build_dataset(cfg0.data, "val"), range(240))
dl = build_dataloader(ds, 16, 0, False)
def ld(cfg, ck):
    m = build_detector(load_config(cfg).model); load_model_weights(m, ck); return m.eval()
Tm = ld(tcfg, tck); S = [ld("demo/gfl_r18_digits", c) for c in studs]
crit = build_criterion(cfg0)
acc = [[0.] * 6 for _ in S]
proj = torch.arange(17.)
def kl(s, t, T): return (T * T * F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="none").mean(1))
with torch.no_grad():
    for images, targets in dl:
        tg = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        to = crit.flatten(Tm(images)); ta = crit.assign(to, tg); pos = ta.pos
        tt = crit.box_targets(to, ta)
        t = to.box_logits[pos].reshape(-1, 17)
        for a, m in zip(acc, S):
            so = crit.flatten(m(images)); st = crit.box_targets(so, crit.assign(so, tg))
            s = so.box_logits[pos].reshape(-1, 17)
            ev = lambda x: (F.softmax(x, 1) * proj).sum(1)
            iou = bbox_overlaps(st.pred_boxes, tt.target_boxes, is_aligned=True)[pos]
            a[0] += kl(s, t, 10.).sum().item(); a[1] += kl(s, t, 1.).sum().item()
            a[2] += (ev(s) - ev(t)).abs().sum().item(); a[3] += iou.sum().item(); a[4] += len(s); a[5] += len(iou)
    tiou = None
for c, a in zip(studs, acc):
    print(f"{c}: KL(T=10)·T² {a[0]/a[4]:.4f}  KL(T=1) {a[1]/a[4]:.4f}  |E[d]s-E[d]t| {a[2]/a[4]:.4f} bins  IoU {a[3]/a[5]:.4f}")
