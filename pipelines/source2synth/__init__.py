"""Source2Synth (Lupidi et al.): seeded multi-hop and table QA, curated by a model fine-tuned on half."""
