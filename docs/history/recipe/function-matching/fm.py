#!/usr/bin/env python3
"""Prototype, outside kdtrain: function matching on extra views (Bucila et al. 2006,
"Model compression"; Beyer et al. 2022, "Knowledge distillation: a good teacher is
patient and consistent") for the 784-128-10 student with dropout 0.1, measured before
building anything into kdtrain.

    python3 fm.py --teacher TEACHER.pt --mode kd|alone|fm [--extra mix|erase] >> results.jsonl

TEACHER.pt is a teacher exported with `kdtrain export CKPT --format torchscript` (here
the cnn20 teacher of docs/history/recipe). `alone`: cross-entropy on the labels; `kd`: kd at T,
alpha with the T^2-scaled KL (Hinton et al. 2015, section 2) on the training images, the
teacher's logits cached; `fm`: the same kd loss plus, at every step, a second batch of
extra views with the KL term alone (weight w * (1 - alpha), no labels), so the clean
images keep their full weight. K = 8 fixed extra views per example, stored as bytes, the
teacher's logits cached on them, each epoch one view per example: `mix` is
lam * x_i + (1 - lam) * x_j (j from a permutation per view, lam ~ Beta(mix, mix)),
`erase` zeroes one random rectangle of 4 to 14 pixels a side (random erasing). Adam
(amsgrad, eps 1e-7), cosine LR from 1e-3 to 1e-4 per step, batch 256, the epoch with the
best validation accuracy kept, one thread. The validation split is a torch.randperm with
seed 20150309, not kdtrain's, so compare rows of results.jsonl with each other, not with
kdtrain's runs.
"""
import gzip, sys, time, json, argparse
import numpy as np, torch, torch.nn.functional as F
p = argparse.ArgumentParser()
p.add_argument('--mode', default='kd')  # kd | alone | fm
p.add_argument('--extra', default='mix')  # mix | erase | noise (Gaussian, sd --noise; not run)
p.add_argument('--mix', type=float, default=1.0)
p.add_argument('--noise', type=float, default=0.1)
p.add_argument('--w', type=float, default=1.0)  # weight of extra KL
p.add_argument('--K', type=int, default=8)
p.add_argument('--T', type=float, default=2.0)
p.add_argument('--alpha', type=float, default=0.5)
p.add_argument('--epochs', type=int, default=200)
p.add_argument('--seed', type=int, default=0)
p.add_argument('--drop', type=float, default=0.1)
p.add_argument('--teacher', required=True)
a = p.parse_args()
torch.set_num_threads(1)
D = '/usr/share/datasets/fashion-mnist/'
def imgs(f):
    with gzip.open(D + f) as g: return np.frombuffer(g.read(), np.uint8, offset=16).reshape(-1, 784)
def labs(f):
    with gzip.open(D + f) as g: return np.frombuffer(g.read(), np.uint8, offset=8).astype(np.int64)
X = torch.tensor(imgs('train-images-idx3-ubyte.gz')).float() / 255; Y = torch.tensor(labs('train-labels-idx1-ubyte.gz'))
Xt = torch.tensor(imgs('t10k-images-idx3-ubyte.gz')).float() / 255; Yt = torch.tensor(labs('t10k-labels-idx1-ubyte.gz'))
g = torch.Generator().manual_seed(20150309); perm = torch.randperm(60000, generator=g)
vi, ti = perm[:5000], perm[5000:]
Xv, Yv, X, Y = X[vi], Y[vi], X[ti], Y[ti]
n = X.shape[0]
torch.manual_seed(a.seed)
gv = torch.Generator().manual_seed(1000 + a.seed)
t0 = time.time()
def teach(tm, v):
    with torch.no_grad():
        return torch.cat([tm(v[s:s+1000].view(-1, 1, 28, 28)) for s in range(0, v.shape[0], 1000)])
if a.mode != 'alone':
    tm = torch.jit.load(a.teacher).eval()
    TC = teach(tm, X)
EV, ET = [], []
import os
cf = f"cache-{a.extra}-{a.mix}-{a.noise}-{a.K}-{a.seed}.pt"  # the views and their logits, reused
if a.mode == 'fm' and os.path.exists(cf):
    EV, ET = torch.load(cf)
elif a.mode == 'fm':
    for k in range(a.K):
        if a.extra == 'mix':
            j = torch.randperm(n, generator=gv)
            lam = torch.distributions.Beta(a.mix, a.mix).sample((n,))
            v = lam[:, None] * X + (1 - lam[:, None]) * X[j]
        elif a.extra == 'noise':
            v = (X + a.noise * torch.randn(X.shape, generator=gv)).clamp(0, 1)
        elif a.extra == 'erase':
            v = X.clone().view(n, 28, 28)
            hs = torch.randint(4, 15, (n,), generator=gv); ws = torch.randint(4, 15, (n,), generator=gv)
            ys = torch.randint(0, 28, (n,), generator=gv); xs = torch.randint(0, 28, (n,), generator=gv)
            r = torch.arange(28)
            m = ((r[None, :, None] >= ys[:, None, None]) & (r[None, :, None] < (ys + hs)[:, None, None]) &
                 (r[None, None, :] >= xs[:, None, None]) & (r[None, None, :] < (xs + ws)[:, None, None]))
            v = (v * (~m)).view(n, 784)
        v = torch.round(v * 255) / 255
        EV.append(v); ET.append(teach(tm, v))
    EV = torch.stack(EV); ET = torch.stack(ET)
    torch.save((EV, ET), cf)
print('setup', time.time() - t0, file=sys.stderr)
net = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Dropout(a.drop), torch.nn.Linear(128, 10))
opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7, amsgrad=True)
B = 256; steps = (n + B - 1) // B; total = steps * a.epochs
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(s, total) / total)))
best = (-1, 0, 0)
T = a.T
def kl(out, tb):
    return F.kl_div(F.log_softmax(out / T, 1), F.log_softmax(tb / T, 1), reduction='batchmean', log_target=True) * T * T
t0 = time.time()
for ep in range(a.epochs):
    net.train()
    order = torch.randperm(n)
    if a.mode == 'fm':
        which = torch.randint(0, a.K, (n,), generator=gv); order2 = torch.randperm(n)
    for s in range(0, n, B):
        idx = order[s:s+B]
        out = net(X[idx])
        ce = F.cross_entropy(out, Y[idx])
        if a.mode == 'alone':
            loss = ce
        else:
            loss = a.alpha * ce + (1 - a.alpha) * kl(out, TC[idx])
        if a.mode == 'fm':
            i2 = order2[s:s+B]; w = which[i2]
            loss = loss + a.w * (1 - a.alpha) * kl(net(EV[w, i2]), ET[w, i2])
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    net.eval()
    with torch.no_grad():
        va = (net(Xv).argmax(1) == Yv).float().mean().item(); ta = (net(Xt).argmax(1) == Yt).float().mean().item()
    if va > best[0]: best = (va, ta, ep + 1)
r = dict(vars(a), best_val=best[0], test=best[1], best_epoch=best[2], secs=time.time() - t0)
print(json.dumps(r)); sys.stdout.flush()
