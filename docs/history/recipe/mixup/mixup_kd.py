#!/usr/bin/env python3
"""Prototype, outside kdtrain: mixup views with consistent teaching (Beyer et al. 2022,
"Knowledge distillation: a good teacher is patient and consistent", function matching
on mixup) for the 784-128-10 student, measured before building it into kdtrain.

    python3 mixup_kd.py --teacher TEACHER.pt --mode kd --mix 1.0 >> results.jsonl

TEACHER.pt is a teacher exported with `kdtrain export CKPT --format torchscript`. As in
kdtrain: K = 8 fixed views per example (view k of example i = lam * x_i + (1 - lam) * x_j,
j from a permutation per view, lam ~ Beta(mix, mix), stored as bytes like kdtrain's view
store), the teacher's logits cached on those views, each epoch one view per example;
the hard-label term is mixup's lam * CE(y_i) + (1 - lam) * CE(y_j); kd at T, alpha with
the T^2-scaled KL (Hinton et al. 2015, section 2); Adam (amsgrad, eps 1e-7), cosine LR
from 1e-3 to 1e-4 per step, batch 256, 200 epochs, the epoch with the best validation
accuracy kept. --mix 0 trains on the images as they are. The validation split is a
torch.randperm with seed 20150309, not kdtrain's, so compare rows of results.jsonl with
each other, not with kdtrain's runs.
"""
import gzip, sys, time, json, argparse
import numpy as np, torch, torch.nn.functional as F
p = argparse.ArgumentParser()
p.add_argument('--mode', default='kd')  # kd | alone
p.add_argument('--mix', type=float, default=0.0)  # Beta(a,a) mixup; 0 = none
p.add_argument('--K', type=int, default=8)
p.add_argument('--T', type=float, default=2.0)
p.add_argument('--alpha', type=float, default=0.5)
p.add_argument('--epochs', type=int, default=200)
p.add_argument('--seed', type=int, default=0)
p.add_argument('--threads', type=int, default=1)
p.add_argument('--teacher', required=True)
p.add_argument('--hidden', type=int, default=128)
p.add_argument('--lr', type=float, default=1e-3)
a = p.parse_args()
torch.set_num_threads(a.threads)
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
# K views: view = lam*x_i + (1-lam)*x_j, quantised to u8 like a stored view
views, partners, lams = [], [], []
for k in range(a.K if a.mix > 0 else 1):
    if a.mix > 0:
        j = torch.randperm(n, generator=gv)
        lam = torch.distributions.Beta(a.mix, a.mix).sample((n,))
        v = (lam[:, None] * X + (1 - lam[:, None]) * X[j])
        v = torch.round(v * 255) / 255
    else:
        j = torch.arange(n); lam = torch.ones(n); v = X
    views.append(v); partners.append(j); lams.append(lam)
if a.mode == 'kd':
    tm = torch.jit.load(a.teacher).eval()
    t0 = time.time()
    with torch.no_grad():
        tl = [torch.cat([tm(v[s:s+1000].view(-1, 1, 28, 28)) for s in range(0, n, 1000)]) for v in views]
    print('teacher cache', time.time() - t0, 's', file=sys.stderr)
    with torch.no_grad():
        tacc = (torch.cat([tm(Xt[s:s+1000].view(-1,1,28,28)) for s in range(0,10000,1000)]).argmax(1) == Yt).float().mean().item()
    print('teacher test', tacc, file=sys.stderr)
V = torch.stack(views); L = torch.stack(lams); P = torch.stack(partners)
if a.mode == 'kd': TL = torch.stack(tl)
net = torch.nn.Sequential(torch.nn.Linear(784, a.hidden), torch.nn.ReLU(), torch.nn.Linear(a.hidden, 10))
opt = torch.optim.Adam(net.parameters(), lr=a.lr, eps=1e-7, amsgrad=True)
B = 256; steps = (n + B - 1) // B; total = steps * a.epochs
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(s, total) / total)))
best = (-1, 0, 0)
T = a.T
for ep in range(a.epochs):
    net.train()
    order = torch.randperm(n)
    which = torch.randint(0, len(views), (n,), generator=gv)
    for s in range(0, n, B):
        idx = order[s:s+B]; w = which[idx]
        xb = V[w, idx]; lam = L[w, idx]; yj = Y[P[w, idx]]
        out = net(xb)
        ce = (lam * F.cross_entropy(out, Y[idx], reduction='none') + (1 - lam) * F.cross_entropy(out, yj, reduction='none')).mean()
        if a.mode == 'kd':
            tb = TL[w, idx]
            kl = F.kl_div(F.log_softmax(out / T, 1), F.log_softmax(tb / T, 1), reduction='batchmean', log_target=True) * T * T
            loss = a.alpha * ce + (1 - a.alpha) * kl
        else:
            loss = ce
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    net.eval()
    with torch.no_grad():
        va = (net(Xv).argmax(1) == Yv).float().mean().item(); ta = (net(Xt).argmax(1) == Yt).float().mean().item()
    if va > best[0]: best = (va, ta, ep + 1)
print(json.dumps(dict(vars(a), best_val=best[0], test=best[1], best_epoch=best[2])))
