# GPT-3 1.3B (Brown et al. 2020, Table 2.1: 24 layers, d_model 2048, 16 heads, context 2048),
# trained with the paper's recipe: 300B tokens; batch 1M tokens, ramped up from 32K over the first
# 6B tokens; lr 0.0002, linear warmup over 375M tokens, cosine decay to 10% over 260B; AdamW betas
# 0.9/0.95, eps 1e-8, weight decay 0.1, gradient clipping at 1.0; dense and locally banded attention alternating.
# $ python data/openwebtext/prepare.py     # documents separated by <|endoftext|>, packed: every context is full
# $ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt3_xl.py
# 4 sequences * 2048 tokens * 128 micro-batches (over all 8 GPUs) = 1,048,576 tokens per step at full
# batch (the paper: 1M); ~291,151 steps for 300B tokens, the ramp's smaller steps included.
# Memory: 1,316M parameters; fp32 weights, gradients and AdamW moments take 16 bytes per parameter,
# 21 GB per GPU under DDP; plus activations (bf16 autocast).
# Chosen here, not given by the paper: the band (attn_window=256), which layers are banded (the odd ones),
# and the ramp length within the paper's 4-12B range (longer for larger models).
# Expect: the validation loss of the paper's Figure 3.1 for this size. Not run end to end here (no GPUs);
# config/train_gpt3_cpu.py runs the same recipe at CPU scale.
out_dir = 'out-gpt3-xl'
wandb_log = True
wandb_project = 'gpt3'
wandb_run_name = 'gpt3-xl'
dataset = 'openwebtext'
n_layer = 24
n_head = 16
n_embd = 2048
block_size = 2048
attn_pattern = 'alternating'
attn_window = 256
dropout = 0.0
batch_size = 4
gradient_accumulation_steps = 128
learning_rate = 0.0002
min_lr = 2e-05  # 10% of the peak
warmup_tokens = 375_000_000
lr_decay_tokens = 260_000_000_000
batch_ramp_start = 65_536  # 32K tokens, or one sequence per GPU if that is more
batch_ramp_tokens = 6_000_000_000
max_iters = 291_151
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
eval_interval = 1000
eval_iters = 100
log_interval = 10
