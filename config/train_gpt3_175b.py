# GPT-3 175B (Brown et al. 2020, Table 2.1: 96 layers, d_model 12288, 96 heads, context 2048),
# trained with the paper's recipe: 300B tokens; batch 3.2M tokens, ramped up from 32K over the first
# 12B tokens; lr 6e-05, linear warmup over 375M tokens, cosine decay to 10% over 260B; AdamW betas
# 0.9/0.95, eps 1e-8, weight decay 0.1, gradient clipping at 1.0; dense and locally banded attention alternating.
# $ python data/openwebtext/prepare.py     # documents separated by <|endoftext|>, packed: every context is full
# $ torchrun --nnodes=64 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 --rdzv_id=JOB train.py config/train_gpt3_175b.py
# 1 sequences * 2048 tokens * 1536 micro-batches (over all 512 GPUs) = 3,145,728 tokens per step at full
# batch (the paper: 3.2M); ~97,274 steps for 300B tokens, the ramp's smaller steps included.
# Memory: 174,604M parameters; fp32 weights, gradients and AdamW moments take 16 bytes per parameter,
# 2,794 GB in all: shard them with FSDP, 5.5 GB per GPU on 512 GPUs; plus activations (bf16 autocast).
# Chosen here, not given by the paper: the band (attn_window=256), which layers are banded (the odd ones),
# and the ramp length within the paper's 4-12B range (longer for larger models).
# Expect: the validation loss of the paper's Figure 3.1 for this size. Not run end to end here (no GPUs);
# config/train_gpt3_cpu.py runs the same recipe at CPU scale.
out_dir = 'out-gpt3-175b'
wandb_log = True
wandb_project = 'gpt3'
wandb_run_name = 'gpt3-175b'
dataset = 'openwebtext'
n_layer = 96
n_head = 96
n_embd = 12288
block_size = 2048
attn_pattern = 'alternating'
attn_window = 256
dropout = 0.0
batch_size = 1
gradient_accumulation_steps = 1536
learning_rate = 6e-05
min_lr = 6e-06  # 10% of the peak
warmup_tokens = 375_000_000
lr_decay_tokens = 260_000_000_000
batch_ramp_start = 1_048_576  # 32K tokens, or one sequence per GPU if that is more
batch_ramp_tokens = 12_000_000_000
max_iters = 97_274
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
eval_interval = 1000
eval_iters = 100
log_interval = 10
parallelism = 'fsdp'
