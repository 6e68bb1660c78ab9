"""Slow, direct transcriptions of the reference algorithms, for tests and benchmarks.

``sparsegpt_column_by_column`` follows IST-DASLab/sparsegpt ``SparseGPT.fasterprune`` line by
line (per-column loop), with one change documented in sparsebench/metrics/sparsegpt.py: the
unstructured mask of a block prunes exactly floor(numel * ratio) weights (the reference's
``<= threshold`` prunes one more).
"""

from __future__ import annotations

import math

import torch


def wanda_mask(weight: torch.Tensor, inputs: torch.Tensor, ratio: float) -> torch.Tensor:
    """Wanda's ``prune_wanda`` for one layer: per row, the lowest |W| * ||X_j|| are pruned."""
    metric = weight.abs() * torch.sqrt((inputs.float() ** 2).sum(0)).reshape(1, -1)
    order = torch.sort(metric, dim=-1, stable=True)[1]
    indices = order[:, : int(weight.shape[1] * ratio)]
    mask = torch.zeros_like(metric, dtype=torch.bool)
    mask.scatter_(1, indices, True)
    return mask


def wanda_nm_mask(weight: torch.Tensor, inputs: torch.Tensor, n: int, m: int) -> torch.Tensor:
    metric = weight.abs() * torch.sqrt((inputs.float() ** 2).sum(0)).reshape(1, -1)
    mask = torch.zeros_like(metric, dtype=torch.bool)
    for ii in range(metric.shape[1]):
        if ii % m == 0:
            tmp = metric[:, ii : ii + m].float()
            mask.scatter_(1, ii + torch.topk(tmp, n, dim=1, largest=False)[1], True)
    return mask


def ria_mask(weight: torch.Tensor, inputs: torch.Tensor, ratio: float, a: float = 0.5, per_outneuron: bool = False) -> torch.Tensor:
    """RIA's ``prune_ria`` for one layer, with exactly floor(numel * ratio) pruned per group."""
    scaler_row = (inputs.float() ** 2).sum(0) / inputs.shape[0]
    w = torch.abs(weight)
    metric = (w / torch.sum(w, dim=0) + w / torch.sum(w, dim=1).reshape(-1, 1)) * (torch.sqrt(scaler_row.reshape((1, -1)))) ** a
    mask = torch.zeros_like(metric, dtype=torch.bool)
    if per_outneuron:
        mask.scatter_(1, torch.sort(metric, dim=-1, stable=True)[1][:, : int(metric.shape[1] * ratio)], True)
    else:
        mask.view(-1)[torch.sort(metric.flatten(), stable=True)[1][: int(metric.numel() * ratio)]] = True
    return mask


def sparsegpt_column_by_column(W, H, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=0.01):
    W = W.clone()
    H = H.clone()
    rows, columns = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            k = math.floor(tmp.numel() * sparsity + 1e-6)
            mask1 = torch.zeros(tmp.numel(), dtype=torch.bool, device=tmp.device)
            mask1[torch.sort(tmp.flatten(), stable=True)[1][:k]] = True
            mask1 = mask1.view_as(tmp)
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i : (i + prunem)] ** 2 / (torch.diag(Hinv1)[i : (i + prunem)].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W
