"""Inductive out-of-context reasoning (OOCR), after Treutlein et al. 2024, "Connecting the Dots".

A model is fine-tuned on documents that each reveal a hidden latent only implicitly (coin flips,
function outputs, parities, distances), then asked to state the latent outright.

Modules (import the one you need; only `tasks` is free of torch):
    tasks      seeded generators of training documents and evaluation items for the five tasks
    scoring    option log-likelihoods under a causal LM, free-form lambda checks, bootstrap CIs
    finetune   LoRA fine-tuning on completion tokens; in-context-learning prompts
    evaluate   per-item results, summary table with CIs, per-task plot
"""

from .tasks import TASKS  # numpy only; the torch modules load on demand

CONDITIONS = ("finetuned", "icl", "untuned")
