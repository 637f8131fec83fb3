"""Reference values for the unit tests of src/objective/: each distillation objective as
its authors' code computes it, on the tiny tensors the Rust tests use.

Run: ~/.cache/kdtrain/torch-2.11.0/bin/python scripts/objective_reference.py

Sources (the loss functions below are copied from them, trimmed to what the tests use):
- kd:   Hinton et al. 2015; torchdistill's KDLoss (alpha*CE + (1-alpha)*T^2*KL, batchmean)
- dkd:  Zhao et al., CVPR 2022; mdistiller mdistiller/distillers/DKD.py
- lskd: Sun et al., CVPR 2024; logit-standardization-KD mdistiller/distillers/KD.py
- dist: Huang et al., NeurIPS 2022; DIST_KD classification/lib/models/losses/dist_kd.py
- mse:  Ba & Caruana 2014 (L2 on logits), F.mse_loss
"""
import torch
import torch.nn.functional as F

torch.set_printoptions(precision=8)


def kd(z, t, y, T, alpha, t2=True):
    ce = F.cross_entropy(z, y)
    kl = F.kl_div(F.log_softmax(z / T, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True)
    s = T * T if t2 else 1.0
    return alpha * ce + (1 - alpha) * s * kl, ce, kl


# mdistiller DKD.py
def _get_gt_mask(logits, target):
    target = target.reshape(-1)
    return torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1).bool()


def _get_other_mask(logits, target):
    target = target.reshape(-1)
    return torch.ones_like(logits).scatter_(1, target.unsqueeze(1), 0).bool()


def cat_mask(t, mask1, mask2):
    t1 = (t * mask1).sum(dim=1, keepdims=True)
    t2 = (t * mask2).sum(1, keepdims=True)
    return torch.cat([t1, t2], dim=1)


def dkd_parts(logits_student, logits_teacher, target, temperature):
    gt_mask = _get_gt_mask(logits_student, target)
    other_mask = _get_other_mask(logits_student, target)
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd = F.kl_div(log_pred_student, pred_teacher, reduction="sum") / target.shape[0]
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum") / target.shape[0]
    return tckd, nckd


def dkd(z, t, y, T, a, b, ce_w, warmup, epoch):
    ce = F.cross_entropy(z, y)
    tckd, nckd = dkd_parts(z, t, y, T)
    w = min(epoch / warmup, 1.0)
    return ce_w * ce + w * T * T * (a * tckd + b * nckd), ce, tckd, nckd


# logit-standardization-KD
def normalize(logit):
    mean = logit.mean(dim=-1, keepdims=True)
    stdv = logit.std(dim=-1, keepdims=True)
    return (logit - mean) / (1e-7 + stdv)


def lskd(z, t, y, T, kd_w, ce_w):
    ce = F.cross_entropy(z, y)
    zs, ts = normalize(z), normalize(t)
    kl = F.kl_div(F.log_softmax(zs / T, dim=1), F.softmax(ts / T, dim=1), reduction="none").sum(1).mean()
    return ce_w * ce + kd_w * T * T * kl, ce, kl


# DIST_KD dist_kd.py
def cosine_similarity(a, b, eps=1e-8):
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def pearson_correlation(a, b, eps=1e-8):
    return cosine_similarity(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps)


def inter_class_relation(y_s, y_t):
    return 1 - pearson_correlation(y_s, y_t).mean()


def intra_class_relation(y_s, y_t):
    return inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))


def dist(z, t, y, tau, beta, gamma, ce_w):
    ce = F.cross_entropy(z, y)
    y_s = (z / tau).softmax(dim=1)
    y_t = (t / tau).softmax(dim=1)
    inter = inter_class_relation(y_s, y_t)
    intra = intra_class_relation(y_s, y_t)
    return ce_w * ce + tau * tau * (beta * inter + gamma * intra), ce, inter, intra


def mse(z, t, y, alpha):
    ce = F.cross_entropy(z, y)
    m = F.mse_loss(z, t)
    return alpha * ce + (1 - alpha) * m, ce, m


Z = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.3, -1.2, 2.2, 0.0], [-0.5, 0.4, 0.1, 1.5]])
TT = torch.tensor([[3.0, -1.0, 0.5, 2.0], [0.0, 1.0, 4.0, -2.0], [1.0, 1.0, -1.0, 2.5]])
Y = torch.tensor([0, 2, 3])

cases = {
    "kd T=2 alpha=0.5": lambda z, t: kd(z, t, Y, 2.0, 0.5),
    "dkd T=4 a=1 b=8 ce=1 warmup=20 epoch=5": lambda z, t: dkd(z, t, Y, 4.0, 1.0, 8.0, 1.0, 20, 5),
    "lskd T=2 kd=9 ce=0.1": lambda z, t: lskd(z, t, Y, 2.0, 9.0, 0.1),
    "dist tau=1 beta=1 gamma=1 ce=1": lambda z, t: dist(z, t, Y, 1.0, 1.0, 1.0, 1.0),
    "dist tau=2 beta=2 gamma=0.5 ce=1": lambda z, t: dist(z, t, Y, 2.0, 2.0, 0.5, 1.0),
    "mse alpha=0.5": lambda z, t: mse(z, t, Y, 0.5),
}
for name, f in cases.items():
    z = Z.clone().requires_grad_(True)
    out = f(z, TT)
    out[0].backward()
    print(name, "->", [round(float(v.detach()), 7) for v in out])
    print("   grad[0] =", [round(float(v), 7) for v in z.grad[0]])
