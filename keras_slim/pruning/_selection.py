"""Which channels channel pruning removes (private).

Shared by `prune_channels` and the `ChannelPruning` callback: argument
checks, the analysis of a model with what may not be pruned pinned, the
importance of every channel, and the choice of the classes to remove.
"""

import numpy as np

from keras_slim import _validation
from keras_slim.pruning import _graph

CRITERIA = ("l1", "l2", "bn_gamma")
_UNMATCHED = "not matched by `filters`"


def check_args(fraction, criterion, min_channels, round_to, name):
    _validation.check_range(name, fraction, 0, 1, high_inclusive=False)
    _validation.check_choice("criterion", criterion, CRITERIA)
    _validation.check_int("min_channels", min_channels, minimum=1)
    if round_to is not None:
        _validation.check_int("round_to", round_to, minimum=1)


def analyse(model, filters, criterion):
    """Analyse `model`, pin what may not be pruned, score the producers."""
    _validation.check_model(model)
    predicate = _validation.compile_filters(filters)
    analysis = _graph.Analysis(model)
    selected = [
        name
        for name in analysis.producers
        if predicate(name, analysis.by_name[name].layer)
    ]
    if filters is not None and not selected:
        raise ValueError(
            "Expected `filters` to match at least one Conv or Dense layer "
            f"of {model.name!r} ({', '.join(analysis.producers)}). "
            f"Received: filters={filters!r}"
        )
    skipped = {}
    for name in analysis.producers:
        if name not in selected:
            skipped[name] = _UNMATCHED
    norms = {}
    for node in analysis.nodes:
        if node.role == "norm" and node.inputs:
            norms.setdefault(node.inputs[0][0][0], node)
    importance = scores(analysis, criterion, norms, skipped)
    for name in skipped:
        analysis.pin(analysis.producers[name])
    analysis.validate()
    for name, elems in analysis.producers.items():
        if all(analysis.pinned[analysis.find(int(e))] for e in elems):
            skipped.setdefault(name, "its channels reach a model output")
    analysis.norms = norms
    return analysis, importance, skipped


def why_none(analysis, skipped):
    """Why no channel of `analysis`'s model can be pruned: one clause per
    Conv/Dense layer (`skipped`'s reasons) and per layer with weights
    whose channels this analysis does not map (an LSTM, an Embedding)."""
    # The layers `filters` left out last: the others say why what the
    # user asked for cannot be pruned.
    ordered = sorted(skipped.items(), key=lambda item: item[1] == _UNMATCHED)
    clauses = [
        f"{name!r} ({analysis.by_name[name].kind}): {reason}"
        for name, reason in ordered
    ]
    reasons = {node.name: reason for node, reason, _ in analysis.deferred}
    for node in analysis.nodes:
        layer = node.layer
        if node.name in analysis.producers or not getattr(
            layer, "weights", None
        ):
            continue
        if node.name in analysis.unknown:
            why = reasons.get(node.name, "its channel mapping is not known")
            clauses.append(
                f"{node.name!r} ({node.kind}): its units are not pruned ({why})"
            )
    if len(clauses) > 8:  # a large model: the first ones say enough
        clauses = clauses[:8] + [f"and {len(clauses) - 8} more layers"]
    return "; ".join(clauses) or "it has no Conv or Dense layer"


def nothing_to_prune(analysis, skipped, caller):
    """The error for a model in which no channel may be removed."""
    model = analysis.model
    return ValueError(
        f"{caller} found no channel it may remove in model {model.name!r}: "
        f"{why_none(analysis, skipped)}. Channel pruning removes the "
        "filters of Conv layers and the units of Dense layers whose "
        "channels do not reach a model output. Received: "
        f"model={model.name!r}"
    )


def scores(analysis, criterion, norms, skipped):
    """Importance of each producer's channels, normalised to mean 1."""
    out = {}
    for name, elems in analysis.producers.items():
        node = analysis.by_name[name]
        if criterion == "bn_gamma":
            norm = norms.get(name)
            if norm is None or getattr(norm.layer, "gamma", None) is None:
                skipped.setdefault(name, "no BatchNormalization follows it")
                continue
            score = np.abs(np.asarray(norm.layer.gamma))
        else:
            kernel = _graph.producer_kernel(node).reshape(-1, len(elems))
            if criterion == "l1":
                score = np.sum(np.abs(kernel), axis=0)
            else:
                score = np.sqrt(np.sum(np.square(kernel), axis=0))
        out[name] = score / (np.mean(score) + 1e-12)
    return out


def _class_scores(analysis, scores):
    out = {}
    for root, members in analysis.classes().items():
        total = 0.0
        for e in members:
            owner = analysis.owner[e]
            if owner in scores:
                idx = e - int(analysis.producers[owner][0])
                total += float(scores[owner][idx])
        out[root] = total
    return out


def select(analysis, scores, fraction, min_channels, round_to, pruned=()):
    """Return the set of class roots to remove (a superset of `pruned`)."""
    class_scores = _class_scores(analysis, scores)
    classes = analysis.classes()
    remove = set()
    for group in analysis.groups():
        total = len(
            {
                analysis.find(int(e))
                for root in group
                for m in classes[root]
                for e in analysis.producers[analysis.owner[m]]
            }
        )
        keep = _graph.keep_count(total, fraction, min_channels, round_to)
        drop = min(total - keep, len(group))
        already = [r for r in group if r in pruned]
        rest = sorted(
            (r for r in group if r not in pruned),
            key=lambda r: (class_scores[r], r),
        )
        chosen = already + rest[: max(0, drop - len(already))]
        remove.update(chosen)
    return remove
