"""The reference scripts' closed-form edit, written once for the tests that re-derive it
(tests/compiler/test_reference.py, test_referees.py): torch float64, no erasec code."""

from __future__ import annotations

import torch


def edit(weights, erase, retain, lam, erase_scale, preserve_scale):
    """One closed-form edit of every layer from ``weights`` (the scripts' loop): per layer
    ``mat1 = λW + es Σ (W g) kᵀ + ps Σ (W p) pᵀ``, ``mat2 = λI + es Σ k kᵀ + ps Σ p pᵀ``,
    ``W ← mat1 mat2⁻¹``; ``erase`` is (keys, guides) row pairs, ``retain`` the retained rows."""
    result = {}
    for name, w in weights.items():
        d = w.shape[1]
        mat1 = lam * w.clone()
        mat2 = lam * torch.eye(d, dtype=torch.float64)
        for key, guide in erase:
            mat1 += erase_scale * torch.outer(w @ guide, key)
            mat2 += erase_scale * torch.outer(key, key)
        for key in retain:
            mat1 += preserve_scale * torch.outer(w @ key, key)
            mat2 += preserve_scale * torch.outer(key, key)
        result[name] = torch.linalg.solve(mat2.T, mat1.T).T
    return result


def speed_edit(weights, targets, anchors, retain, K2, *, rng, aug_num=10, threshold=0.1, retain_scale=1.0, lamb=0.0, disable_filter=False):
    """SPEED's ``edit_model`` (Ouxiang-Li/SPEED @6d3df0c ``train_erase_null.py``, baseline 'SPEED') for
    the layers ``weights`` (visited in dict order): ``targets``/``anchors`` are their prompts' rows
    (n, d), ``retain`` the retain rows after the script's regex filter, ``K2`` the (d, 4) invariants
    (the script: BOS row of '' and kmeans_pytorch's 3 centroids of its rows 1..76; the caller picks
    them). ``rng`` (a numpy Generator) stands in for torch's global generator, drawn in the script's
    order: ``randperm`` once, then per layer, chunk, mini-batch and sample, ``randn_like``."""
    d = retain.shape[1]
    eye = torch.eye(d, dtype=torch.float64)
    sum_target_target = torch.stack([torch.outer(t, t) for t in targets]).mean(0)
    sum_anchor_target = torch.stack([torch.outer(a, t) for a, t in zip(anchors, targets)]).mean(0)
    last_ret_embs = retain[torch.from_numpy(rng.permutation(retain.shape[0]))]  # shuffle

    def generate_perturbed_embs(ret_embs, P, erase_weight, num_per_sample, mini_batch=8):
        out_embs, norm_list = [], []
        for i in range(0, ret_embs.size(0), mini_batch):
            mini_ret_embs = ret_embs[i : i + mini_batch]
            for _ in range(num_per_sample):
                noise = torch.from_numpy(rng.standard_normal(tuple(mini_ret_embs.shape)))  # torch.randn_like
                perturbed_embs = mini_ret_embs + noise @ P
                out_embs.append(perturbed_embs)
                norm_list.append(torch.matmul(perturbed_embs, erase_weight.T).norm(dim=1))
        out_embs, norm_list = torch.cat(out_embs), torch.cat(norm_list)
        return out_embs[norm_list > norm_list.mean()]

    result = {}
    for name, layer_weight in weights.items():
        erase_weight = layer_weight @ (sum_anchor_target - sum_target_target) @ torch.linalg.inv(eye + sum_target_target)
        _, _, V0 = torch.svd(layer_weight)
        P0_min = V0[:, -1:] @ V0[:, -1:].T
        if aug_num > 0 and not disable_filter:
            weight_norm_init = torch.matmul(last_ret_embs, erase_weight.T).norm(dim=1)
            layer_ret_embs = last_ret_embs[weight_norm_init > weight_norm_init.mean()]
        else:
            layer_ret_embs = last_ret_embs
        sum_ret_ret, valid_num = [], 0
        for j in range(0, len(layer_ret_embs), 128):  # chunk_size
            chunk_ret_embs = layer_ret_embs[j : j + 128]
            if aug_num > 0:
                extra = generate_perturbed_embs(chunk_ret_embs, P0_min, erase_weight, num_per_sample=aug_num)
                chunk_ret_embs = torch.cat([chunk_ret_embs, extra])
            valid_num += chunk_ret_embs.shape[0]
            sum_ret_ret.append(chunk_ret_embs.T @ chunk_ret_embs)
        sum_ret_ret = torch.stack(sum_ret_ret).sum(0) / valid_num
        U, S, _ = torch.svd(sum_ret_ret)
        P = U[:, S < threshold] @ U[:, S < threshold].T
        M = torch.linalg.inv(sum_target_target @ P + retain_scale * eye)
        I2 = torch.eye(K2.shape[1], dtype=torch.float64)
        inner = torch.linalg.inv(K2.T @ P @ M @ K2 + lamb * I2)
        delta = layer_weight @ (sum_anchor_target - sum_target_target) @ P @ (eye - M @ K2 @ inner @ K2.T @ P) @ M
        result[name] = layer_weight + delta
    return result
