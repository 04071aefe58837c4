"""Slow, loop-by-loop re-statements of the published evaluation code, to test the fast versions against.

Written from the published definitions (not copied): HoVer-Net / PanNuke-metrics ``remap_label``,
``get_fast_pq``, ``get_fast_aji``, ``get_fast_aji_plus`` and ``binarize``; PanNuke-metrics ``run.py``;
Matterport ``compute_matches`` / ``compute_ap``; pycocotools ``COCOeval.evaluateImg`` / ``accumulate``.
"""

import warnings

import numpy as np
from scipy.optimize import linear_sum_assignment


def remap_label(x):
    """Ids renumbered 1..n in increasing order (HoVer-Net remap_label, by_size=False)."""
    out = np.zeros(x.shape, np.int64)
    for new, old in enumerate(sorted(set(np.unique(x).tolist()) - {0})):
        out[x == old] = new + 1
    return out


def _masks(x):
    """The reference's list of uint8 masks indexed by id (valid only for contiguous ids)."""
    ids = list(np.unique(x))
    return ids, [None] + [(x == i).astype(np.uint8) for i in ids[1:]]


def pairwise(true, pred):
    """get_fast_pq's loop: (intersection, union) of overlapping pairs, zeros elsewhere."""
    t_ids, t_masks = _masks(true)
    p_ids, p_masks = _masks(pred)
    inter = np.zeros((len(t_ids) - 1, len(p_ids) - 1))
    union = np.zeros_like(inter)
    for t in t_ids[1:]:
        for p in np.unique(pred[t_masks[t] > 0]):
            if p == 0:
                continue
            total, shared = (t_masks[t] + p_masks[p]).sum(), (t_masks[t] * p_masks[p]).sum()
            inter[t - 1, p - 1], union[t - 1, p - 1] = shared, total - shared
    return inter, union, t_masks, p_masks


def get_fast_pq(true, pred, match_iou=0.5):
    """(dq, sq, pq, tp, fp, fn) of remapped maps; raises ZeroDivisionError when both are empty."""
    true, pred = remap_label(true), remap_label(pred)
    inter, union, t_masks, p_masks = pairwise(true, pred)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    if match_iou >= 0.5:
        paired_true, paired_pred = np.nonzero(iou > match_iou)
    else:
        paired_true, paired_pred = linear_sum_assignment(-iou)
        keep = iou[paired_true, paired_pred] > match_iou
        paired_true, paired_pred = paired_true[keep], paired_pred[keep]
    paired_iou = iou[paired_true, paired_pred]
    tp = len(paired_true)
    fp, fn = len(p_masks) - 1 - tp, len(t_masks) - 1 - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = paired_iou.sum() / (tp + 1.0e-6)
    return dq, sq, dq * sq, tp, fp, fn


def _aji(true, pred, unique):
    true, pred = remap_label(true), remap_label(pred)
    inter, union, t_masks, p_masks = pairwise(true, pred)
    iou = inter / (union + 1.0e-6)
    if unique:
        paired_true, paired_pred = linear_sum_assignment(-iou)
        keep = iou[paired_true, paired_pred] > 0.0
        paired_true, paired_pred = paired_true[keep], paired_pred[keep]
    else:
        paired_pred = np.argmax(iou, axis=1)
        paired_true = np.nonzero(np.max(iou, axis=1) > 0.0)[0]
        paired_pred = paired_pred[paired_true]
    overall_inter = inter[paired_true, paired_pred].sum()
    overall_union = union[paired_true, paired_pred].sum()
    for t in range(1, len(t_masks)):
        if t - 1 not in paired_true:
            overall_union += t_masks[t].sum()
    for p in range(1, len(p_masks)):
        if p - 1 not in paired_pred:
            overall_union += p_masks[p].sum()
    return overall_inter / overall_union


def get_fast_aji(true, pred):
    return _aji(true, pred, unique=False)


def get_fast_aji_plus(true, pred):
    return _aji(true, pred, unique=True)


def binarize(x):
    """PanNuke-metrics binarize: (channel, id) pairs numbered 1, 2, ...; a later channel overwrites."""
    out = np.zeros(x.shape[:2])
    count = 1
    for c in range(x.shape[2]):
        for j in sorted(set(np.unique(x[..., c]).tolist()) - {0}):
            sel = x[..., c] == j
            out *= 1 - sel
            out += count * sel
            count += 1
    return out.astype(np.int32)


def pannuke_run(true, pred, types, channels=5, tissue_order=None):
    """PanNuke-metrics run.py main(), without files, and with remap_label on the binarised maps."""
    m_all, b_all = [], []
    for i in range(true.shape[0]):
        t_bin, p_bin = binarize(true[i, :, :, :channels]), binarize(pred[i, :, :, :channels])
        pq_bin = np.nan if len(np.unique(t_bin)) == 1 else get_fast_pq(t_bin, p_bin)[2]
        pq = []
        for j in range(channels):
            t = remap_label(true[i, :, :, j].astype("int32"))
            p = remap_label(pred[i, :, :, j].astype("int32"))
            pq.append(np.nan if len(np.unique(t)) == 1 else get_fast_pq(t, p)[2])
        m_all.append(pq)
        b_all.append([pq_bin])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN: NaN, as run.py
        m_each = [np.nanmean(pq) for pq in m_all]
        b_each = [np.nanmean(pq) for pq in b_all]
        tissues = tissue_order or list(dict.fromkeys(types))
        m_tissue = [np.nanmean([m_each[i] for i, x in enumerate(types) if x == t]) for t in tissues]
        b_tissue = [np.nanmean([b_each[i] for i, x in enumerate(types) if x == t]) for t in tissues]
        per_class = [np.nanmean([pq[c] for pq in m_all]) for c in range(channels)]
        return {
            "mpq": np.nanmean(m_tissue),
            "bpq": np.nanmean(b_tissue),
            "per_tissue_mpq": dict(zip(tissues, m_tissue, strict=True)),
            "per_tissue_bpq": dict(zip(tissues, b_tissue, strict=True)),
            "per_class": per_class,
        }


def mask_iou(a, b):
    out = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            union = np.logical_or(a[i], b[j]).sum()
            out[i, j] = np.logical_and(a[i], b[j]).sum() / union if union else 0.0
    return out


def matterport_ap(gt_masks, pred_masks, scores, iou_threshold=0.5, double_match_bug=False):
    """compute_matches + compute_ap for one class, masks (N, H, W).

    Ties are broken as in our code (equal scores: input order; equal IoUs: lower true index); Matterport's
    reversed argsorts take the reverse, which only matters for exact ties.
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    overlaps = mask_iou(pred_masks[order], gt_masks)
    pred_match = -np.ones(len(order))
    gt_match = -np.ones(len(gt_masks))
    for i in range(len(order)):
        for j in np.argsort(-overlaps[i], kind="stable"):  # ties: lower index first
            if (gt_match[j] > 0) if double_match_bug else (gt_match[j] > -1):
                continue
            if overlaps[i, j] < iou_threshold:
                break
            gt_match[j], pred_match[i] = i, j
            break
    precisions = np.cumsum(pred_match > -1) / (np.arange(len(pred_match)) + 1)
    recalls = np.cumsum(pred_match > -1).astype(np.float32) / len(gt_match)
    precisions = np.concatenate([[0], precisions, [0]])
    recalls = np.concatenate([[0], recalls, [1]])
    for i in range(len(precisions) - 2, -1, -1):
        precisions[i] = np.maximum(precisions[i], precisions[i + 1])
    indices = np.where(recalls[:-1] != recalls[1:])[0] + 1
    return np.sum((recalls[indices] - recalls[indices - 1]) * precisions[indices])


def coco_ap(images, thresholds, max_dets=None):
    """COCOeval (one category, area all, no crowd) as loops: list of AP per threshold."""
    rec_thrs = np.linspace(0.0, 1.00, 101)
    per_t = []
    for t in thresholds:
        dt_scores, dt_hit, npig = [], [], 0
        for gt, dt, scores in images:
            order = np.argsort(-np.asarray(scores), kind="mergesort")[:max_dets]
            ious = mask_iou(dt[order], gt)
            npig += len(gt)
            gtm = np.zeros(len(gt))
            for d in range(len(order)):
                iou, m = min(t, 1 - 1e-10), -1
                for g in range(len(gt)):
                    if gtm[g] > 0 or ious[d, g] < iou:
                        continue
                    iou, m = ious[d, g], g
                if m > -1:
                    gtm[m] = d + 1
                dt_hit.append(m > -1)
                dt_scores.append(scores[order[d]])
        if npig == 0:
            per_t.append(np.nan)
            continue
        inds = np.argsort(-np.array(dt_scores), kind="mergesort")
        tps = np.array(dt_hit, bool)[inds]
        tp, fp = np.cumsum(tps).astype(float), np.cumsum(~tps).astype(float)
        rc = tp / npig
        pr = (tp / (fp + tp + np.spacing(1))).tolist()
        for i in range(len(pr) - 1, 0, -1):
            if pr[i] > pr[i - 1]:
                pr[i - 1] = pr[i]
        q = np.zeros(len(rec_thrs))
        for ri, pi in enumerate(np.searchsorted(rc, rec_thrs, side="left")):
            if pi < len(pr):
                q[ri] = pr[pi]
        per_t.append(q.mean())
    return per_t
