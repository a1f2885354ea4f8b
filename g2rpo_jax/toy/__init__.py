"""The toy task of the CPU demo and the toy study (issue 9).

task        addition written units digit first, one explicit step per digit, exact verifier
tokenizer   a character-level Hugging Face tokenizer for it
data        JSONL rows in our schema; token batches for supervised runs
sft         supervised training on reference traces (the warm start, the study's control)
evaluation  held-out unguided accuracy with our Sampler; trace log-likelihood (difficulty)
demo        the demo model's recipe and build (scripts/make_demo_model.py)
study       the variants and protocol of scripts/toy_study.py (parts 1–2)
study_part3 part 3: pass@k, RL after an SFT plateau, hard traces, guidance on failure
study_report  its tables, paired comparisons and plots
"""
