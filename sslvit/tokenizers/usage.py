"""Codebook usage: how many codes a tokenizer really uses on some data, and whether it collapsed."""
from __future__ import annotations

import math

import torch

COLLAPSE_PERPLEXITY_SHARE = 0.1  # perplexity below 10% of the vocabulary: effectively a few codes
COLLAPSE_USED_SHARE = 0.5  # fewer than half the codes ever chosen


def codebook_usage(ids: torch.Tensor, vocab: int) -> dict:
    """ids (any shape) -> codes used, their share, the perplexity exp(H) of the code histogram
    (the number of equally used codes with the same entropy; V when all are used equally) and
    the share of the most frequent code."""
    counts = torch.bincount(ids.flatten().cpu(), minlength=vocab).double()
    p = counts / counts.sum()
    nz = p[p > 0]
    perplexity = math.exp(float(-(nz * nz.log()).sum()))
    used = int((counts > 0).sum())
    return {"vocab": vocab, "tokens": int(counts.sum()), "codes_used": used, "used_share": used / vocab,
            "perplexity": perplexity, "perplexity_share": perplexity / vocab, "top_code_share": float(p.max())}


def collapse_warnings(usage: dict) -> list[str]:
    """Sentences naming the collapse, empty when the codebook is healthy."""
    out = []
    if usage["perplexity_share"] < COLLAPSE_PERPLEXITY_SHARE:
        out.append(f"the codebook has collapsed: perplexity {usage['perplexity']:.1f} means the data effectively "
                   f"uses {usage['perplexity']:.0f} of {usage['vocab']} codes (the most frequent one takes "
                   f"{100 * usage['top_code_share']:.0f}% of the patches); fit a smaller vocab, on more varied "
                   "images, or use the features tokenizer.")
    if usage["used_share"] < COLLAPSE_USED_SHARE:
        out.append(f"only {usage['codes_used']} of {usage['vocab']} codes are ever chosen on this data; lower "
                   "the vocab.")
    return out


def format_usage(usage: dict) -> str:
    return (f"codebook usage: {usage['codes_used']}/{usage['vocab']} codes used ({100 * usage['used_share']:.1f}%), "
            f"perplexity {usage['perplexity']:.1f} ({100 * usage['perplexity_share']:.1f}% of the vocab), "
            f"most frequent code {100 * usage['top_code_share']:.1f}% of {usage['tokens']} patches")
