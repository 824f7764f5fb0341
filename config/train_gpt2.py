# GPT-2 124M on OpenWebText, reproducing OpenAI's model (nanoGPT's recipe).
# $ python data/openwebtext/prepare.py
# $ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
# Expect: val loss ~2.85 after ~4 days on 8xA100 40GB (OpenAI's GPT-2 124M scores 3.11 on
# OpenWebText before finetuning, ~2.85 after).
# 12 batch * 1024 block * 5 accum * 8 GPUs = 491,520 tokens/iter; 600,000 iters = ~300B tokens.
wandb_log = True
wandb_project = 'owt'
wandb_run_name = 'gpt2-124M'
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8   # total over all processes; divided by the number of GPUs
max_iters = 600000
lr_decay_iters = 600000
eval_interval = 1000
eval_iters = 200
log_interval = 10
weight_decay = 1e-1
