"""Where does the LD gradient go? Share of |dLD/ds_i| on bins near the GT distance vs far bins, per T.

    SPLIT=train python benchmarks/ld_bins.py STUDENT_CFG STUDENT_CKPT TEACHER_CFG TEACHER_CKPT
"""
import sys, os, torch
from locdistill.config import load_config
from locdistill.models import build_detector
from locdistill.distill import build_criterion
from locdistill.checkpoint import load_model_weights
from locdistill.data.loader import build_dataset, build_dataloader
from locdistill.boxes import bbox2distance
torch.set_num_threads(1)
scfg, sck, tcfg, tck = sys.argv[1:5]
cfg0 = load_config(scfg)
ds = build_dataset(cfg0.data, os.environ.get("SPLIT", "val"))
ds = torch.utils.data.Subset(ds, range(160))
dl = build_dataloader(ds, 16, 0, False)
def ld(cfg, ck):
    m = build_detector(load_config(cfg).model); load_model_weights(m, ck); return m.eval()
S, Tm = ld(scfg, sck), ld(tcfg, tck)
crit = build_criterion(cfg0)
acc = {}
with torch.no_grad():
    for images, targets in dl:
        tg = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        so, to = S(images), Tm(images)
        sd, td = crit.flatten(so), crit.flatten(to)
        a0 = crit.assign(sd, tg); t0 = crit.box_targets(sd, a0); pos = a0.pos
        d = bbox2distance(sd.centers.expand_as(t0.pred_boxes[..., :2]).reshape(-1, 2), t0.target_boxes.reshape(-1, 4), max_dis=16, eps=0.1).reshape(t0.pred_boxes.shape)[pos].reshape(-1)
        s = sd.box_logits[pos].reshape(-1, 17); t = td.box_logits[pos].reshape(-1, 17)
        bins = torch.arange(17.).expand_as(s)
        near = (bins - d[:, None]).abs() < 1.5
        for T in (1., 3., 5., 10.):
            g = (T / 17 * (torch.softmax(s / T, 1) - torch.softmax(t / T, 1))).abs()
            a = acc.setdefault(T, [0., 0.]); a[0] += g[near].sum().item(); a[1] += g[~near].sum().item()
        # far-bin logit gaps
        a = acc.setdefault("gap", [0., 0., 0]);
        a[0] += ((s - s.max(1, keepdim=True).values)[~near]).mean().item() * 1; a[1] += ((t - t.max(1, keepdim=True).values)[~near]).mean().item(); a[2] += 1
for T in (1., 3., 5., 10.):
    n, f = acc[T]; print(f"T={T}: |grad| near {n:.1f} far {f:.1f} far share {f/(n+f):.2f}")
a = acc["gap"]; print(f"mean far-bin logit minus max: student {a[0]/a[2]:.2f} teacher {a[1]/a[2]:.2f}")
