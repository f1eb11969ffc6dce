"""Shared names: the label roles a schema maps its label columns to, and the model heads they train.

A user's schema names its own label columns (``labels: {click: is_click}``); everything after the data
job speaks of the roles below. Click only -> a CTR model (head ``ctr``); click + conversion -> ESMM
(heads ``ctr``, ``cvr``, ``ctcvr``).
"""

from __future__ import annotations

CLICK = "click"  # role: the impression was clicked (pCTR's label)
CONVERSION = "conversion"  # role: the click converted (pCVR's label on clicks; pCTCVR's on impressions)
CTR, CVR, CTCVR = "ctr", "cvr", "ctcvr"
RAW_SUFFIX = "_raw"  # a calibrated model's uncalibrated outputs: ctr_raw, ...


def heads(has_conversion: bool) -> tuple[str, ...]:
    """The model's output heads for a label set with or without the conversion role."""
    return (CTR, CVR, CTCVR) if has_conversion else (CTR,)


# head -> (label role, role of the rows it is evaluated and calibrated on; None = all impressions)
HEAD_LABELS = {CTR: (CLICK, None), CVR: (CONVERSION, CLICK), CTCVR: (CONVERSION, None)}

# What a fine-tune may change (tfads.finetune): every weight, the task towers only, all but the embeddings.
FINETUNE_MODES = ("full", "heads", "frozen_embeddings")
