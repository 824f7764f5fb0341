# GPT-2 124M on FineWeb-Edu 10B: the modern reproduction (llm.c's GPT-2 124M settings, Karpathy's build-nanogpt),
# one epoch of the sample-10BT shards with HellaSwag scored at every evaluation.
# $ python data/fineweb/prepare.py     # FineWeb-Edu sample-10BT: ~10B tokens in 100M-token shards, ~20 GB of disk
# $ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_fineweb.py
# 32 batch * 1024 block * 16 micro-steps (2 per GPU on 8 GPUs) = 524,288 tokens per step (llm.c: 64 * 1024 * 8);
# 19,073 steps = 10.0B tokens, one epoch. On 80 GB GPUs --batch_size=64 --gradient_accumulation_steps=8 is the same
# step in fewer, larger micro-batches. lr 6e-4 after a 700-step linear warmup, cosine to 0 at the last step; AdamW
# betas 0.9/0.95, weight decay 0.1, gradient clip 1.0. Validation: 40 * 32 * 1024 * 8 = 10,485,760 val tokens
# each time (modded-nanogpt's val size), and all 10,042 HellaSwag validation examples (downloaded once to data/eval/).
# Expect (published runs of this recipe, not measured here: this repository has no GPUs to run it):
# HellaSwag ~30% after the epoch (OpenAI's GPT-2 124M: 29.4%; llm.c's 124M on FineWeb 10B: 29.9%, ~90 min on
# 8xA100 80GB), FineWeb-Edu val loss ~3.1 (llm.c on FineWeb's val: ~3.28, modded-nanogpt's speedrun target).
# Rehearsed at CPU scale in tests/test_fineweb.py: prepare a few local shards, train across them, resume, evaluate.
out_dir = 'out-gpt2-fineweb'
dataset = 'fineweb'
batch_size = 32
block_size = 1024
gradient_accumulation_steps = 2 * 8   # total over all processes; divided by the number of GPUs
n_layer = 12
n_head = 12
n_embd = 768
learning_rate = 6e-4
max_iters = 19073
warmup_iters = 700
lr_decay_iters = 19073
min_lr = 0.0
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
eval_interval = 250
eval_iters = 40
eval_train = False    # val loss only (as llm.c), half the evaluation's cost
eval_tasks = 'hellaswag'
eval_tasks_limit = 0  # all 10,042
log_interval = 10
