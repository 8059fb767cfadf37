"""The name, version and model card of a fine-tuned model."""
from __future__ import annotations

import re
from datetime import datetime

from napari_lgms._words import counted

FT_SUFFIX = re.compile(r"-ft-\d{8}-\d{6}$")


def model_family(name: str) -> str:
    """The model a fine-tuned version descends from by name: ``X-ft-YYYYmmdd-HHMMSS`` -> ``X``."""
    return FT_SUFFIX.sub("", name)


def new_version_name(parent: str, now: datetime | None = None) -> str:
    """``parent`` without an earlier fine-tune's suffix, plus ``-ft-YYYYmmdd-HHMMSS``."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{model_family(parent)}-ft-{stamp}"


def next_version(version: str) -> str:
    """"3" -> "4"; a version that is not a whole number gets ".1" appended."""
    text = str(version or "1")
    return str(int(text) + 1) if text.isdigit() else f"{text}.1"


def finetuned_card(parent, new_name, loaded, parent_sha, data_record, settings, evidence, decision, before,
                   after, steps, elapsed, time_budget, seed, device, preset):
    """The new version's card: the parent's network, input, normalisation, classes, output, prompt
    and terms; this run's record, its cross-fitted scores and its lineage."""
    from napari_lgms.training.cards import card_metrics, model_card, rounded

    return model_card(
        name=new_name, architecture=parent.architecture, arguments=parent.arguments, input_spec=parent.input,
        normalization=parent.normalization, class_names=parent.class_names, output_spec=parent.output,
        prompt=parent.prompt, version=next_version(parent.version),
        description=f"{parent.description} Fine-tuned from {parent.name} on "
                    f"{counted(len(data_record.get('keys', [])), 'user correction')}.".strip(),
        training={**{k: v for k, v in parent.training.items() if k in ("data", "terms")},
                  "finetune": {"preset": preset, "steps": steps, "seconds": round(elapsed, 1),
                               "time_budget": time_budget, "settings": settings.__dict__, "seed": seed,
                               "device": device.type, "data": data_record}},
        metrics=card_metrics("two-fold cross-fitting over the corrections", "verdict", after),
        lineage={"parent": parent.name, "parent_version": parent.version, "parent_path": str(loaded.path or ""),
                 "parent_sha256": parent_sha, "data": data_record, "metrics_before": rounded(before),
                 "metrics_after": rounded(after), "verdict": decision, "evidence": evidence,
                 "improved": decision == "better", "parent_lineage": parent.lineage or None},
        licence=parent.licence, citation=parent.citation, intended_use=parent.intended_use,
    )
